"""The cluster token: who may join a rendezvous or a coordinator.

Every rank, and the coordinator of `galaxy-serve`, holds the same secret (the environment
variable GALAXY_CLUSTER_TOKEN, or a file). It never travels: a joining party proves it knows
the token with an HMAC-SHA256 over a fresh nonce chosen by the other side, its role, its rank,
the world size and the sha256 of plan.json. So a proof is good for one nonce only (no replay),
and a rank that runs another plan, or believes in another world size, fails the check even
with the right token. Both sides prove themselves (the verifier answers over the joiner's own
nonce), so a rank never takes requests from a stranger posing as the coordinator or as rank 0.

What this does not do: gloo's own traffic (the tensors between ranks) and the serving control
channel after the handshake are neither authenticated nor encrypted; anyone on the network
path can read them, and a stranger who can inject packets into an established connection is
not stopped. The token keeps strangers from joining, nothing more.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path

from .errors import GalaxyRuntimeError, UsageError

TOKEN_ENV = "GALAXY_CLUSTER_TOKEN"
MIN_TOKEN_BYTES = 16


class AuthenticationError(GalaxyRuntimeError):
    """A party failed the token check or runs another plan. `rank` names the joining rank."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


def load_token(token_file: str | Path | None = None) -> bytes:
    """The cluster token from `token_file` ("-": one line of stdin), else GALAXY_CLUSTER_TOKEN."""
    if token_file == "-":
        text = sys.stdin.readline()
        source = "standard input"
    elif token_file is not None:
        try:
            text = Path(token_file).expanduser().read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the cluster token file {token_file}: {exc.strerror}; "
                             "create it (galaxy-serve --new-token FILE) or fix its path") from exc
        source = str(token_file)
    else:
        text = os.environ.get(TOKEN_ENV, "")
        source = TOKEN_ENV
    token = text.strip().encode()
    if not token:
        raise UsageError(f"no cluster token: {source} is empty or unset; set {TOKEN_ENV} to the same "
                         "secret on every device (or name a token file), e.g. "
                         "`export GALAXY_CLUSTER_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')`")
    if len(token) < MIN_TOKEN_BYTES:
        raise UsageError(f"the cluster token from {source} has {len(token)} characters; use at least "
                         f"{MIN_TOKEN_BYTES} (e.g. secrets.token_hex(16))")
    return token


def new_token() -> str:
    """A fresh random token (32 hex characters)."""
    return secrets.token_hex(16)


def new_nonce() -> str:
    return secrets.token_hex(16)


def plan_digest(bundle_dir: str | Path) -> str:
    """sha256 of the bundle's plan.json: two ranks agree on the plan iff these agree."""
    return hashlib.sha256((Path(bundle_dir) / "plan.json").read_bytes()).hexdigest()


def proof(token: bytes, role: str, nonce: str, rank: int, world_size: int, plan_sha: str) -> str:
    """HMAC-SHA256(token, role | nonce | rank | world size | plan sha), hex."""
    message = f"galaxy/1|{role}|{nonce}|{rank}|{world_size}|{plan_sha}".encode()
    return hmac.new(token, message, hashlib.sha256).hexdigest()


def is_valid(token: bytes, presented: str, role: str, nonce: str, rank: int, world_size: int,
             plan_sha: str) -> bool:
    """Whether `presented` is the proof of `role` for these values (constant-time compare)."""
    expected = proof(token, role, nonce, rank, world_size, plan_sha)
    return isinstance(presented, str) and hmac.compare_digest(expected, presented)


def refusal(who: str, their_plan: str, their_world: int, our_plan: str, our_world: int,
            proof_ok: bool) -> str | None:
    """Why `who` is refused, or None: another plan, another world size, or a wrong token."""
    if their_plan != our_plan:
        return (f"{who} runs plan {their_plan[:12]} but this cluster runs plan {our_plan[:12]} "
                "(another bundle): deploy the same bundle to every device")
    if their_world != our_world:
        return f"{who} expects {their_world} ranks but this plan has {our_world}"
    if not proof_ok:
        return (f"{who} failed the cluster token check (wrong token): give every device the same "
                f"{TOKEN_ENV} or token file")
    return None
