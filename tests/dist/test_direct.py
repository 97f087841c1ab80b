"""Direct (pairwise) collectives, plain and fused with a GEMM, on real gloo processes.

Each is compared with its slow twin (the naive collectives, composed with F.linear for the
fused ones) and with the one-process computation: uneven splits, ranks holding 0 tokens,
ring orders other than rank order, [batch, seq, hidden] along dim 1 and [seq, hidden] along
dim 0, fp16 on the wire. One spawned world per world size runs every case.
Tolerances, stated once:
"""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from _gloo import assert_op_passed, check, make, run_world
from galaxy.runtime.collectives import all_gather_naive, reduce_scatter_naive
from galaxy.runtime.direct import (all_gather_direct, all_gather_linear_direct, linear_reduce_scatter_direct,
                                   reduce_scatter_direct)
from galaxy.runtime.errors import CollectiveTimeout
from galaxy.runtime.ring import Ring
from galaxy.runtime.splits import offsets

pytestmark = pytest.mark.dist

EXACT = dict(rtol=0, atol=0)  # gathers only copy bytes
FP32 = dict(rtol=1e-5, atol=1e-5)  # sums of partials and GEMMs on row slices reorder fp32 adds
FP16_WIRE = dict(rtol=1e-2, atol=1e-2)  # activations or partials rounded to fp16 (2^-11) once

SPLITS = {1: [[5], [0]], 2: [[3, 2], [0, 4]], 3: [[2, 0, 3], [1, 4, 1], [0, 0, 4]],
          4: [[3, 0, 2, 1], [0, 5, 0, 0], [1, 3, 1, 2]]}
RING_ORDERS = {1: [(0,)], 2: [(0, 1), (1, 0)], 3: [(0, 1, 2), (2, 0, 1)], 4: [(0, 1, 2, 3), (3, 1, 0, 2)]}
OPS = ["all_gather_direct", "reduce_scatter_direct", "all_gather_linear_direct",
       "linear_reduce_scatter_direct", "wire_float16"]
IN_FEATURES, OUT_FEATURES = 3, 5


def cases(world: int):
    """(name, ring order, tokens per ring position, shape with T for tokens, token dim)."""
    for order in RING_ORDERS[world]:
        for split in SPLITS[world]:
            yield f"ring{order} split{split} bsh", order, split, (2, "T", IN_FEATURES), 1
    yield f"split{SPLITS[world][0]} th", RING_ORDERS[world][0], SPLITS[world][0], ("T", IN_FEATURES), 0


def run_all_cases(rank: int, world: int) -> dict[str, list[str]]:
    failures = {op: [] for op in OPS}
    for seed, (case, order, split, shape, dim) in enumerate(cases(world)):
        ring = Ring(order, rank, timeout_s=10)
        me, starts = ring.index, offsets(split)
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen)
        bias = None if seed % 2 else torch.randn(OUT_FEATURES, generator=gen)
        (full,) = make(shape, sum(split), seed)
        local = full.narrow(dim, starts[me], split[me])
        partials = make(shape, sum(split), 1000 + seed, count=world)  # one per ring position
        expected = sum(partials).narrow(dim, starts[me], split[me])
        weights = [torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen) for _ in range(world)]
        expected_linear = sum(F.linear(x, w) for x, w in zip(partials, weights)).narrow(dim, starts[me], split[me])

        got = all_gather_direct(local, split, ring, dim)
        naive = all_gather_naive(local, split, ring, dim)
        check(failures, "all_gather_direct", case, lambda: assert_close(got, full, **EXACT))
        check(failures, "all_gather_direct", case + " vs naive", lambda: assert_close(got, naive, **EXACT))

        got = reduce_scatter_direct(partials[me], split, ring, dim)
        naive = reduce_scatter_naive(partials[me], split, ring, dim)
        check(failures, "reduce_scatter_direct", case, lambda: assert_close(got, expected, **FP32))
        check(failures, "reduce_scatter_direct", case + " vs naive", lambda: assert_close(got, naive, **FP32))

        got = all_gather_linear_direct(local, weight, bias, split, ring, dim)
        plain = F.linear(all_gather_naive(local, split, ring, dim), weight, bias)
        check(failures, "all_gather_linear_direct", case, lambda: assert_close(got, plain, **FP32))

        got = linear_reduce_scatter_direct(partials[me], weights[me], split, ring, dim)
        plain = reduce_scatter_naive(F.linear(partials[me], weights[me]), split, ring, dim)
        check(failures, "linear_reduce_scatter_direct", case, lambda: assert_close(got, plain, **FP32))
        check(failures, "linear_reduce_scatter_direct", case + " vs one process",
              lambda: assert_close(got, expected_linear, **FP32))

        half = torch.float16
        rounded = full.half().float() if world > 1 else full  # a ring of 1 moves nothing
        got = all_gather_direct(local, split, ring, dim, wire_dtype=half)
        check(failures, "wire_float16", case + " all_gather_direct", lambda: assert_close(got, rounded, **EXACT))
        got = reduce_scatter_direct(partials[me], split, ring, dim, wire_dtype=half)
        check(failures, "wire_float16", case + " reduce_scatter_direct",
              lambda: assert_close(got, expected, **FP16_WIRE))
        got = all_gather_linear_direct(local, weight, bias, split, ring, dim, wire_dtype=half)
        check(failures, "wire_float16", case + " all_gather_linear_direct",
              lambda: assert_close(got, F.linear(rounded, weight, bias), **FP32))
        got = linear_reduce_scatter_direct(partials[me], weights[me], split, ring, dim, wire_dtype=half)
        check(failures, "wire_float16", case + " linear_reduce_scatter_direct",
              lambda: assert_close(got, expected_linear, **FP16_WIRE))
    return failures


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("op", OPS)
def test_direct_collective_matches_naive_and_single_process(world, op):
    assert_op_passed(world, run_all_cases, op)


def silent_peer(rank: int, world: int):
    """Rank 2 never takes part; ranks 0 and 1 must time out naming it, not each other."""
    ring = Ring((0, 1, 2), rank, timeout_s=1.0, device_names=("alpha", "beta", "gamma"))
    if rank == 2:
        time.sleep(2.5)
        return None
    start = time.monotonic()
    try:
        all_gather_linear_direct(torch.ones(1, 2, 3), torch.ones(4, 3), None, [2, 2, 2], ring)
    except CollectiveTimeout as exc:
        return exc.peer_rank, str(exc), time.monotonic() - start
    return "no error"


@pytest.mark.timeout(60)
def test_a_silent_peer_times_out_with_its_name():
    for peer, message, elapsed in run_world(3, silent_peer, timeout_s=30)[:2]:
        assert peer == 2 and "rank 2 (gamma)" in message and "all_gather_linear_direct" in message, message
        assert elapsed < 3.5
