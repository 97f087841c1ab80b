"""The cluster token: proofs, refusals, and the rendezvous refusing a rank by name.

The rendezvous cases run rank 0 and rank 1 as two threads of this process on a real TCPStore:
a refusal happens before gloo starts, so no process group is needed.
"""
import threading
from pathlib import Path

import pytest

from galaxy.runtime import auth, rendezvous

TOKEN = b"0123456789abcdef0123"


def test_a_proof_holds_for_its_own_values_only():
    good = auth.proof(TOKEN, "rank", "n1", 1, 3, "sha")
    assert auth.is_valid(TOKEN, good, "rank", "n1", 1, 3, "sha")
    for changed in [("master", "n1", 1, 3, "sha"), ("rank", "n2", 1, 3, "sha"), ("rank", "n1", 2, 3, "sha"),
                    ("rank", "n1", 1, 4, "sha"), ("rank", "n1", 1, 3, "other")]:
        assert not auth.is_valid(TOKEN, good, *changed)
    assert not auth.is_valid(b"another token 0123456", good, "rank", "n1", 1, 3, "sha")


def test_refusal_names_the_cause():
    assert auth.refusal("rank 2 (tablet)", "aaa", 3, "aaa", 3, True) is None
    assert "another bundle" in auth.refusal("rank 2 (tablet)", "aaa", 3, "bbb", 3, True)
    assert "wrong token" in auth.refusal("rank 2 (tablet)", "aaa", 3, "aaa", 3, False)


def test_token_from_env_file_and_its_errors(tmp_path, monkeypatch):
    monkeypatch.setenv(auth.TOKEN_ENV, " from-the-environment-123 \n")
    assert auth.load_token() == b"from-the-environment-123"
    path = tmp_path / "token"
    path.write_text("from-a-file-0123456789\n")
    assert auth.load_token(path) == b"from-a-file-0123456789"
    monkeypatch.delenv(auth.TOKEN_ENV)
    with pytest.raises(auth.UsageError, match=auth.TOKEN_ENV):
        auth.load_token()
    path.write_text("short")
    with pytest.raises(auth.UsageError, match="at least 16"):
        auth.load_token(path)
    with pytest.raises(auth.UsageError, match="cannot read the cluster token file"):
        auth.load_token(tmp_path / "absent")


def _two_ranks(tokens, plans):
    listener = rendezvous.listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    errors = {}

    def rank(r):
        try:
            rendezvous.connect(r, 2, "127.0.0.1", port, 5.0, ["alpha", "beta"], token=tokens[r], plan_sha=plans[r],
                               listen_socket=listener if r == 0 else None)
        except Exception as exc:  # collected for the test
            errors[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return errors


def test_rendezvous_refuses_a_wrong_token_by_name():
    errors = _two_ranks([TOKEN, b"not the same token 0123"], ["sha", "sha"])
    for r in (0, 1):
        assert isinstance(errors[r], auth.AuthenticationError), errors
        assert "refused rank 1 (beta)" in str(errors[r]) and "wrong token" in str(errors[r])
        assert errors[r].rank == 1


def test_rendezvous_refuses_a_rank_of_another_plan_by_name():
    errors = _two_ranks([TOKEN, TOKEN], ["plan-a", "plan-b"])
    assert isinstance(errors[0], auth.AuthenticationError) and "refused rank 1 (beta)" in str(errors[0])
    assert "another bundle" in str(errors[0])
    assert isinstance(errors[1], auth.AuthenticationError) and "runs plan" in str(errors[1])


def test_the_store_listens_only_on_its_address():
    """Rank 0's store (a world of one here) is bound to the master address, not to every interface."""
    listener = rendezvous.listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    try:
        rendezvous.connect(0, 1, "127.0.0.1", port, 5.0, token=TOKEN, plan_sha="sha", listen_socket=listener)
        local = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 + Path("/proc/net/tcp6").read_text().splitlines()[1:] if line.split()[3] == "0A"]
        on_port = [address for address in local if int(address.rsplit(":", 1)[1], 16) == port]
        assert on_port == ["0100007F:%04X" % port], on_port  # 127.0.0.1 only
    finally:
        rendezvous.close()
