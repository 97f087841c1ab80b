"""Uneven ring collectives on real gloo processes, against naive twins and one-process maths.

One spawned world per world size runs every case (splits with a rank holding 0 tokens,
ring orders other than rank order, [batch, seq, hidden] along dim 1 and [seq, hidden]
along dim 0) and reports failures per operation; the tests then assert per operation.
Tolerances, stated once:
"""
from __future__ import annotations

import os
import time

import pytest
import torch
from torch.testing import assert_close

from _gloo import assert_op_passed, check, free_port, make, run_world
from galaxy.runtime import rendezvous
from galaxy.runtime.collectives import (all_gather, all_gather_naive, broadcast_tensors,
                                        gather_hidden, reduce_scatter, reduce_scatter_naive,
                                        scatter_hidden)
from galaxy.runtime.errors import CollectiveError, CollectiveTimeout, RendezvousTimeout
from galaxy.runtime.p2p import barrier
from galaxy.runtime.ring import Ring
from galaxy.runtime.splits import offsets

pytestmark = pytest.mark.dist

EXACT = dict(rtol=0, atol=0)  # gathers only copy bytes
FP32 = dict(rtol=1e-5, atol=1e-5)  # a ring sums partials in another order than sum()
FP16_WIRE = dict(rtol=1e-2, atol=1e-2)  # running sums rounded to fp16 (2^-11) at up to 3 hops

SPLITS = {1: [[5], [0]], 2: [[3, 2], [0, 4]], 3: [[2, 0, 3], [1, 1, 1], [0, 0, 4]],
          4: [[3, 0, 2, 1], [0, 5, 0, 0]]}
RING_ORDERS = {1: [(0,)], 2: [(0, 1), (1, 0)], 3: [(0, 1, 2), (2, 0, 1)],
               4: [(0, 1, 2, 3), (3, 1, 0, 2)]}
DEVICES = ("alpha", "beta", "gamma", "delta")
OPS = ["all_gather", "reduce_scatter", "gather_hidden", "scatter_hidden", "wire_float16", "broadcast_tensors"]


def cases(world: int):
    """(name, ring order, tokens per ring position, shape with T for tokens, token dim)."""
    for order in RING_ORDERS[world]:
        for split in SPLITS[world]:
            yield f"ring{order} split{split} bsh", order, split, (2, "T", 3), 1
    yield f"split{SPLITS[world][0]} th", RING_ORDERS[world][0], SPLITS[world][0], ("T", 3), 0


def run_all_cases(rank: int, world: int) -> dict[str, list[str]]:
    failures = {op: [] for op in OPS}
    for seed, (case, order, split, shape, dim) in enumerate(cases(world)):
        ring = Ring(order, rank, timeout_s=10, device_names=DEVICES[:world])
        me, starts = ring.index, offsets(split)
        (full,) = make(shape, sum(split), seed)
        local = full.narrow(dim, starts[me], split[me])
        partials = make(shape, sum(split), 1000 + seed, count=world)  # one per ring position
        expected = sum(partials).narrow(dim, starts[me], split[me])

        got = all_gather(local, split, ring, dim)
        check(failures, "all_gather", case, lambda: assert_close(got, full, **EXACT))
        naive = all_gather_naive(local, split, ring, dim)
        check(failures, "all_gather", case + " naive", lambda: assert_close(naive, full, **EXACT))

        got = reduce_scatter(partials[me], split, ring, dim)
        naive = reduce_scatter_naive(partials[me], split, ring, dim)
        check(failures, "reduce_scatter", case, lambda: assert_close(got, expected, **FP32))
        check(failures, "reduce_scatter", case + " naive",
              lambda: assert_close(naive, expected, **FP32))
        check(failures, "reduce_scatter", case + " vs naive", lambda: assert_close(got, naive, **FP32))

        for dst in {0, world - 1}:
            got = gather_hidden([local, 2 * local], split, ring, dst=dst, dim=dim)
            check(failures, "gather_hidden", f"{case} dst {dst}",
                  lambda: assert_close(got, [full, 2 * full], **EXACT) if me == dst else _all_none(got, 2))
            shape = list(full.shape)
            got = scatter_hidden([full, 2 * full] if me == dst else None, split, ring, [shape, shape], src=dst, dim=dim)
            check(failures, "scatter_hidden", f"{case} src {dst}",
                  lambda: assert_close(got, [local, 2 * local], **EXACT))

        rounded = full.half().float() if world > 1 else full  # a ring of 1 moves nothing
        got = all_gather(local, split, ring, dim, wire_dtype=torch.float16)
        check(failures, "wire_float16", case + " all_gather",
              lambda: assert_close(got, rounded, **EXACT))
        got = reduce_scatter(partials[me], split, ring, dim, wire_dtype=torch.float16)
        check(failures, "wire_float16", case + " reduce_scatter",
              lambda: assert_close(got, expected, **FP16_WIRE))
        got = gather_hidden([local], split, ring, dim=dim, wire_dtype=torch.float16)
        check(failures, "wire_float16", case + " gather_hidden",
              lambda: assert_close(got, [rounded], **EXACT) if me == 0 else _all_none(got, 1))

    world_ring = Ring(tuple(range(world)), rank, timeout_s=10)
    sent = {"ids": torch.arange(6).reshape(2, 3), "mask": torch.tensor([[True, False]]),
            "x": torch.randn(2, 3, generator=torch.Generator().manual_seed(7)),
            "scalar": torch.tensor(2.5, dtype=torch.float64), "empty": torch.zeros(0, 4)}
    got = broadcast_tensors(sent if rank == 0 else None, world_ring)
    check(failures, "broadcast_tensors", "mixed dtypes",
          lambda: [assert_close(got[k], v, **EXACT) for k, v in sent.items()] and _same_keys(got, sent))
    barrier(world_ring)
    return failures


def _all_none(values, count: int) -> None:
    assert values == [None] * count, f"expected {count} None off the destination, got {values!r}"


def _same_keys(a: dict, b: dict) -> None:
    assert list(a) == list(b), (list(a), list(b))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("op", OPS)
def test_collective_matches_naive_and_single_process(world, op):
    assert_op_passed(world, run_all_cases, op)


# --- failures name the peer -----------------------------------------------------------------------

def silent_peer(rank: int, world: int):
    ring = Ring((0, 1), rank, timeout_s=1.0, device_names=("alpha", "beta"))
    if rank == 1:
        time.sleep(2)  # never takes part
        return None
    start = time.monotonic()
    try:
        all_gather(torch.ones(1, 2, 3), [2, 2], ring)
    except CollectiveTimeout as exc:
        return exc.peer_rank, str(exc), time.monotonic() - start
    return "no error"


@pytest.mark.timeout(60)
def test_a_silent_peer_times_out_with_its_name():
    peer, message, elapsed = run_world(2, silent_peer, timeout_s=30)[0]
    assert peer == 1 and "rank 1 (beta)" in message and "all_gather" in message
    assert elapsed < 2.5


def crashing_peer(rank: int, world: int):
    ring = Ring((0, 1), rank, timeout_s=10.0, device_names=("alpha", "beta"))
    if rank == 1:
        os._exit(1)
    try:
        reduce_scatter(torch.ones(1, 4, 2), [2, 2], ring)
    except CollectiveError as exc:
        return exc.peer_rank, str(exc)
    return "no error"


@pytest.mark.timeout(60)
def test_a_crashed_peer_is_named():
    results = run_world(2, crashing_peer, timeout_s=30, allow_errors=True)
    peer, message = results[0]
    assert peer == 1 and "rank 1 (beta)" in message


def join_world_of_three(rank: int, world: int, port: int):
    try:
        rendezvous.connect(rank, 3, "127.0.0.1", port, 2.0, ["alpha", "beta", "gamma"])
    except RendezvousTimeout as exc:
        return exc.missing_ranks, str(exc)
    return "joined"


@pytest.mark.timeout(60)
def test_rendezvous_names_the_rank_that_never_joined_on_every_rank():
    start = time.monotonic()
    results = run_world(2, join_world_of_three, free_port(), timeout_s=30, connect_timeout_s=None)
    for missing, message in results:
        assert missing == (2,) and "rank 2 (gamma)" in message, message
    assert time.monotonic() - start < 20
