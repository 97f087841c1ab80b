"""Rendezvous failures in one process: nobody else joins, the master is absent, bad interface."""
import socket
import time

import pytest

from galaxy.runtime import rendezvous
from galaxy.runtime.errors import RendezvousError, RendezvousTimeout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_master_names_the_rank_that_never_joined():
    start = time.monotonic()
    with pytest.raises(RendezvousTimeout, match=r"never joined: rank 1 \(beta\)") as info:
        rendezvous.connect(0, 2, "127.0.0.1", _free_port(), 1.0, ["alpha", "beta"])
    assert info.value.missing_ranks == (1,)
    assert time.monotonic() - start < 5


def test_worker_says_the_master_is_unreachable():
    start = time.monotonic()
    with pytest.raises(RendezvousTimeout, match=r"could not reach the master \(rank 0 \(alpha\)\)"):
        rendezvous.connect(1, 2, "127.0.0.1", _free_port(), 1.0, ["alpha", "beta"])
    assert time.monotonic() - start < 10


def test_unknown_gloo_interface_is_reported(monkeypatch):
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "no-such-if0")
    with pytest.raises(RendezvousError, match="no-such-if0"):
        rendezvous.connect(0, 1, "127.0.0.1", _free_port(), 1.0)
