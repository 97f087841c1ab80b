"""Emulated link latency in the runtime's transport (runtime/linkdelay.py), checked by a ping-pong
over real gloo processes, and the decode all-reduces (runtime/reduce.py) against their slow twin
with and without that delay.

The delay is what the emulator sets when the kernel has no netem (GALAXY_LINK_LATENCY, by peer
device name); here the ranks set it themselves on loopback, so the test needs no root.
"""
from __future__ import annotations

import json
import os
import statistics
import time

import pytest

from _gloo import run_world

pytestmark = pytest.mark.dist

LATENCY_S = 0.02  # long beside loopback's ~0.1 ms round trip and the VM's scheduling noise
DEVICES = ("alpha", "beta", "gamma")


def _set_latency(rank: int, world: int, latency_s: float) -> None:
    if latency_s:
        peers = {DEVICES[r]: latency_s for r in range(world) if r != rank}
        os.environ["GALAXY_LINK_LATENCY"] = json.dumps(peers)


def _ping_pong(rank: int, world: int, latency_s: float, rounds: int) -> list[float]:
    """Rank 0 sends 1 KB, rank 1 sends it back; rank 0 returns each round trip's seconds."""
    _set_latency(rank, world, latency_s)
    import torch

    from galaxy.runtime.p2p import recv, send
    from galaxy.runtime.ring import Ring

    ring = Ring((0, 1), rank, timeout_s=10, device_names=DEVICES[:2])
    message = torch.arange(256, dtype=torch.float32)
    trips = []
    for i in range(rounds + 2):  # two untimed rounds first
        started = time.perf_counter()
        if rank == 0:
            send(message, 1, ring, "ping", tag=i)
            back = recv(torch.empty_like(message), 1, ring, "pong", tag=i)
            assert torch.equal(back, message)
        else:
            send(recv(torch.empty_like(message), 0, ring, "ping", tag=i), 0, ring, "pong", tag=i)
        trips.append(time.perf_counter() - started)
    return trips[2:]


@pytest.mark.timeout(90)
def test_a_round_trip_takes_twice_the_link_latency():
    plain = statistics.median(run_world(2, _ping_pong, 0.0, 10, timeout_s=60)[0])
    delayed = statistics.median(run_world(2, _ping_pong, LATENCY_S, 10, timeout_s=60)[0])
    assert delayed >= 2 * LATENCY_S, (delayed, plain)
    assert delayed < 2 * LATENCY_S + plain + 0.01, (delayed, plain)  # nothing else slows it down


def _all_reduces(rank: int, world: int, latency_s: float) -> dict[str, float]:
    """Every algorithm against all_reduce_naive on the same partial sums; the greatest difference each."""
    _set_latency(rank, world, latency_s)
    import torch

    from galaxy.runtime.collectives import all_reduce
    from galaxy.runtime.reduce import ALGORITHMS, all_reduce_naive
    from galaxy.runtime.ring import Ring

    ring = Ring(tuple(range(world)), rank, timeout_s=10, device_names=DEVICES[:world])
    part = torch.randn(1, 1, 96, generator=torch.Generator().manual_seed(rank))
    expected = all_reduce_naive(part, ring)
    out = {name: float((all_reduce(part.clone(), ring, algorithm=name) - expected).abs().max())
           for name in ALGORITHMS}
    sub = Ring((world - 1, 0), rank, timeout_s=10, device_names=DEVICES[:world]) if rank in (0, world - 1) else None
    if sub is not None:  # a ring of some of the ranks, in another order
        sub_expected = all_reduce_naive(part, sub)
        out.update({f"{name} over ranks {world - 1},0": float((all_reduce(part.clone(), sub, algorithm=name)
                                                                - sub_expected).abs().max())
                    for name in ALGORITHMS})
    return out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("latency_s", [0.0, 0.002], ids=["plain", "delayed"])
def test_decode_all_reduces_match_the_slow_twin(latency_s):
    for rank_result in run_world(3, _all_reduces, latency_s, timeout_s=90):
        assert rank_result and max(rank_result.values()) < 1e-6, rank_result
