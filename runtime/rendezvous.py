"""Join the process group: a TCPStore rendezvous with deadlines and a token check, then gloo.

Rank 0 serves a `torch.distributed.TCPStore` on a socket bound to the master address only
(`listen`), never on every interface. Rank 0 posts a nonce, its plan's sha256 and the world
size; every other rank registers under `galaxy/joined/<rank>` with its device name, its own
plan sha, its own nonce and its proof of the cluster token (runtime/auth.py: an HMAC over rank
0's nonce, its rank, the world size and the plan sha). Rank 0 checks each as it arrives and
waits until all ranks joined or the deadline passes, then posts `galaxy/go` (with its own proof
for each rank, over that rank's nonce) or `galaxy/abort` (naming the missing or refused rank
and why). The other ranks wait for that verdict and check rank 0's proof, so every process
fails with the same clear message, and a rank never exchanges tensors with a stranger. Only
then does `dist.init_process_group("gloo", store=...)` run, with the same timeout.

Without a token (`token=None`, for in-process tools such as the link profiler) nobody proves
anything; the rank entry point (entry.py) always passes one.

Under torchrun (TORCHELASTIC_USE_AGENT_STORE=True) the agent already serves a store at
MASTER_ADDR:MASTER_PORT, so every rank, rank 0 included, joins it as a client.

gloo picks its network interface from the environment variable GLOO_SOCKET_IFNAME (read by
torch itself); inside network namespaces it must be set or the connection hangs. We only
check that the interfaces it names exist.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import timedelta
from typing import Iterable, Sequence

import torch.distributed as dist

from . import auth
from .errors import RendezvousError, RendezvousTimeout

log = logging.getLogger(__name__)

_POLL_S = 0.05
_VERDICT_GRACE_S = 3.0  # how long past its own deadline a rank waits for rank 0's verdict
_store: dist.Store | None = None  # kept alive while the group lives (rank 0 serves it)


def listen(address: str, port: int = 0) -> socket.socket:
    """A TCP socket bound to `address` only and listening; port 0 lets the kernel pick one
    (read it with getsockname), so a caller that holds the socket never races for a port."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise RendezvousError(f"cannot listen on {address}:{port} ({exc.strerror}); is the address "
                              "this device's own, and the port free?") from exc
    return sock


def connect(rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float,
            device_names: Sequence[str] | None = None, *, token: bytes | None = None,
            plan_sha: str = "", listen_socket: socket.socket | None = None,
            prefix: str | None = None) -> None:
    """Join the gloo group of `world_size` ranks served by rank 0 at master_addr:master_port.

    Rank 0 serves the store on `listen_socket` when given (already bound and listening; the
    process group owns it from then on), else on a socket it binds to master_addr:master_port.
    `prefix` keeps the keys of one rendezvous apart from an earlier one on the same store.
    Raises RendezvousTimeout naming the ranks (and devices) that did not join in time, or
    that this rank could not reach the master; AuthenticationError naming a refused rank.
    """
    global _store
    names = list(device_names or [])

    def who(r: int) -> str:
        return f"rank {r} ({names[r]})" if r < len(names) and names[r] else f"rank {r}"

    if not 0 <= rank < world_size:
        raise RendezvousError(f"rank {rank} is outside the world of {world_size} ranks")
    _check_socket_ifname()
    deadline = time.monotonic() + timeout_s
    store = _open_store(rank, world_size, master_addr, master_port, timeout_s, who, listen_socket, prefix)
    log.info("%s joined the rendezvous at %s:%d (world size %d)", who(rank), master_addr,
             master_port, world_size)
    check = _TokenCheck(token, world_size, plan_sha, who)
    if rank == 0:
        try:
            _lead(store, world_size, deadline, check, who, timeout_s, master_addr, master_port)
        except (RuntimeError, OSError) as exc:  # its store connection was shut (abort_connections)
            raise RendezvousError(f"{who(0)} lost its own rendezvous store ({_first_line(exc)})") from exc
    else:
        _join(store, rank, world_size, deadline, check, who, timeout_s, master_addr, master_port)
    try:
        dist.init_process_group("gloo", store=dist.PrefixStore("galaxy/pg", store), rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise RendezvousTimeout(
            f"{who(rank)}: gloo could not connect to every peer within {timeout_s:g} s "
            f"({_first_line(exc)}); check that all devices reach each other (firewall, "
            "GLOO_SOCKET_IFNAME) and that none has crashed") from exc
    _store = store
    log.info("%s: gloo process group ready", who(rank))


def close() -> None:
    """Leave the process group and stop serving its store (idempotent)."""
    global _store
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _store = None


def abort_connections(keep: Iterable[int] = ()) -> int:
    """Shut down every connected TCP socket of this process except the descriptors in `keep`:
    the gloo group's connections and its store's. Returns how many were shut down.

    A peer whose link went down never closes its connections, so a wait on it would last until
    its timeout; after this, every wait of the group fails at once, as if each peer had died (a
    test showed gloo raising within milliseconds and a new group forming in the same process).
    The group is unusable afterwards: close() it and join a new one. Safe from any thread.
    """
    count = 0
    for fd in _socket_descriptors():
        if fd in keep:
            continue
        try:
            sock = socket.socket(fileno=fd)
        except OSError:  # closed meanwhile, or not a socket any more
            continue
        try:
            if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
                sock.getpeername()  # listening sockets have no peer: they stay
                sock.shutdown(socket.SHUT_RDWR)
                count += 1
        except OSError:
            pass
        finally:
            sock.detach()  # the descriptor stays gloo's (or the store's) to close
    return count


def _socket_descriptors() -> list[int]:
    """This process's socket descriptors ([] without /proc: then waits end at their timeout)."""
    found = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return found
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                found.append(int(name))
        except OSError:  # closed since the listing
            continue
    return found


class _TokenCheck:
    """Proofs and checks of one rendezvous (a no-op without a token)."""

    def __init__(self, token: bytes | None, world_size: int, plan_sha: str, who):
        self.token, self.world_size, self.plan_sha, self.who = token, world_size, plan_sha, who

    def prove(self, role: str, nonce: str, rank: int) -> str:
        if self.token is None:
            return ""
        return auth.proof(self.token, role, nonce, rank, self.world_size, self.plan_sha)

    def refusal(self, rank: int, joined: dict, nonce: str) -> str | None:
        """Why rank 0 refuses what `rank` posted, or None."""
        if self.token is None:
            return None
        ok = auth.is_valid(self.token, joined.get("proof", ""), "rank", nonce, rank,
                           int(joined.get("world_size", -1)), joined.get("plan", ""))
        return auth.refusal(self.who(rank), joined.get("plan", ""), int(joined.get("world_size", -1)),
                            self.plan_sha, self.world_size, ok)


def _lead(store, world_size, deadline, check: _TokenCheck, who, timeout_s, master_addr, master_port):
    """Rank 0: post the challenge, check every rank that joins, then post the verdict."""
    nonce = auth.new_nonce()
    store.set("galaxy/world_size", str(world_size))
    store.set("galaxy/plan", check.plan_sha)
    store.set("galaxy/nonce", nonce)
    store.set("galaxy/joined/0", json.dumps({"device": ""}))
    checked: dict[int, dict] = {}
    while len(checked) < world_size - 1:
        for r in range(1, world_size):
            if r not in checked and store.check([f"galaxy/joined/{r}"]):
                joined = json.loads(store.get(f"galaxy/joined/{r}").decode())
                reason = check.refusal(r, joined, nonce)
                if reason:
                    _abort(store, f"rendezvous refused {who(r)}: {reason}", refused=r)
                    raise auth.AuthenticationError(f"rendezvous refused {who(r)}: {reason}", r)
                checked[r] = joined
        if len(checked) == world_size - 1:
            break
        if time.monotonic() > deadline:
            missing = [r for r in range(1, world_size) if r not in checked]
            message = _missing_message(missing, who, timeout_s, master_addr, master_port)
            _abort(store, message)
            raise RendezvousTimeout(message, missing)
        time.sleep(_POLL_S)
    answers = {r: check.prove("master", joined.get("nonce", ""), r) for r, joined in checked.items()}
    store.set("galaxy/go", json.dumps(answers))


def _abort(store, message: str, refused: int | None = None) -> None:
    store.set("galaxy/abort", json.dumps({"message": message, "refused": refused}))
    time.sleep(5 * _POLL_S)  # let the others read the verdict before the server goes


def _join(store, rank, world_size, deadline, check: _TokenCheck, who, timeout_s, master_addr, master_port):
    """Another rank: answer rank 0's challenge, wait for the verdict, check rank 0's proof."""
    try:
        challenge = _wait_key(store, "galaxy/nonce", deadline + _VERDICT_GRACE_S)
        if challenge is None:
            raise RendezvousTimeout(_missing_message([rank], who, timeout_s, master_addr, master_port), [rank])
        size = int(store.get("galaxy/world_size").decode())
        their_plan = store.get("galaxy/plan").decode()
        if size != world_size:
            raise RendezvousError(f"{who(rank)} expects {world_size} ranks but rank 0 expects {size}; "
                                  "all devices must run modules from the same bundle")
        own_nonce = auth.new_nonce()
        store.set(f"galaxy/joined/{rank}", json.dumps({  # posted first, so rank 0 names us too
            "device": who(rank), "plan": check.plan_sha, "world_size": world_size, "nonce": own_nonce,
            "proof": check.prove("rank", challenge, rank)}))
        if check.token is not None and their_plan != check.plan_sha:
            raise auth.AuthenticationError(
                f"{who(rank)} runs plan {check.plan_sha[:12]} but rank 0 at {master_addr}:{master_port} "
                f"runs plan {their_plan[:12]} (another bundle): deploy the same bundle to every device", rank)
        verdict = _wait_verdict(store, deadline + _VERDICT_GRACE_S)
    except (RuntimeError, OSError) as exc:  # the master went away mid-rendezvous
        raise RendezvousTimeout(
            f"{who(rank)} lost the master ({who(0)}) at {master_addr}:{master_port} during the "
            f"rendezvous ({_first_line(exc)}); see rank 0's log", [0]) from exc
    if verdict is None:
        missing = _missing_now(store, world_size)
        raise RendezvousTimeout(_missing_message(missing, who, timeout_s, master_addr, master_port), missing)
    kind, text = verdict
    if kind == "abort":
        abort = json.loads(text)
        if abort["refused"] is not None:
            raise auth.AuthenticationError(abort["message"], abort["refused"])
        raise RendezvousTimeout(abort["message"], _missing_now(store, world_size))
    answer = json.loads(text).get(str(rank), "")
    if check.token is not None and not auth.is_valid(check.token, answer, "master", own_nonce, rank,
                                                     world_size, check.plan_sha):
        raise auth.AuthenticationError(
            f"{who(rank)}: rank 0 at {master_addr}:{master_port} failed the cluster token check "
            "(it does not hold this cluster's token); check the address, and give every device the "
            f"same {auth.TOKEN_ENV}", 0)


def _wait_key(store, key: str, deadline: float) -> str | None:
    while not store.check([key]):
        if time.monotonic() > deadline:
            return None
        time.sleep(_POLL_S)
    return store.get(key).decode()


def _wait_verdict(store, deadline: float) -> tuple[str, str] | None:
    while True:
        for kind in ("abort", "go"):
            if store.check([f"galaxy/{kind}"]):
                return kind, store.get(f"galaxy/{kind}").decode()
        if time.monotonic() > deadline:
            return None
        time.sleep(_POLL_S)


def _open_store(rank, world_size, master_addr, master_port, timeout_s, who, listen_socket, prefix):
    """The store under `prefix`; rank 0 serves it on `listen_socket` (or its own), which the
    store then owns and closes."""
    serve = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    listener = None
    if serve:
        listener = listen_socket or _listen_for_store(master_addr, master_port)
        master_port = listener.getsockname()[1]
    try:
        store = dist.TCPStore(master_addr, master_port, world_size, serve,
                              timeout=timedelta(seconds=timeout_s), wait_for_workers=False,
                              master_listen_fd=listener.fileno() if listener else None)
    except (RuntimeError, ValueError, OSError) as exc:
        if serve:
            raise RendezvousError(
                f"rank 0 could not serve the rendezvous on {master_addr}:{master_port} "
                f"({_first_line(exc)}); pick another --master port") from exc
        raise RendezvousTimeout(
            f"{who(rank)} could not reach the master ({who(0)}) at {master_addr}:{master_port} "
            f"within {timeout_s:g} s ({_first_line(exc)}); check that rank 0 is started, the "
            "address and port are right and no firewall blocks the port", [0]) from exc
    finally:
        if listener is not None:
            listener.detach()  # the store's server closes the descriptor when it goes
    if prefix is None:  # fresh keys after a torchrun restart
        prefix = f"galaxy/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return dist.PrefixStore(prefix, store)


def _listen_for_store(master_addr: str, master_port: int) -> socket.socket:
    try:
        return listen(master_addr, master_port)
    except RendezvousError as exc:
        raise RendezvousError(f"rank 0 could not serve the rendezvous: {exc}; is the port in use by "
                              "another run? pick another --master port") from exc


def _missing_now(store: dist.Store, world_size: int) -> list[int]:
    return [r for r in range(world_size) if not store.check([f"galaxy/joined/{r}"])]


def _missing_message(missing, who, timeout_s, master_addr, master_port) -> str:
    listed = ", ".join(who(r) for r in missing) or "none (rank 0 gave no verdict)"
    return (f"rendezvous timed out after {timeout_s:g} s; never joined: {listed}; check that "
            f"those devices were started with --master {master_addr}:{master_port}, can reach "
            "that address, and run the same bundle")


def _check_socket_ifname() -> None:
    wanted = os.environ.get("GLOO_SOCKET_IFNAME", "")
    if not wanted:
        return
    available = [name for _, name in socket.if_nameindex()]
    absent = [name for name in wanted.split(",") if name and name not in available]
    if absent:
        raise RendezvousError(f"GLOO_SOCKET_IFNAME={wanted} names {absent}, which this machine "
                              f"lacks (it has {available}); set it to the interface that reaches "
                              "the other devices, or unset it")
    log.info("gloo uses network interface(s) %s (GLOO_SOCKET_IFNAME)", wanted)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
