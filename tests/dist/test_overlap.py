"""Tiled overlap (all_gather_linear, linear_reduce_scatter, project_all_gather) on real gloo processes.

Each is compared with the one-process computation and with its un-tiled composition of a
ring collective and F.linear, for tiles 1, 2, 3 (tiles larger than a chunk leave some
empty), uneven splits with ranks holding 0 tokens and ring orders other than rank order.
Tolerances, stated once:
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from _gloo import assert_op_passed, check, make
from galaxy.runtime.collectives import all_gather, reduce_scatter
from galaxy.runtime.overlap import all_gather_linear, linear_reduce_scatter, project_all_gather
from galaxy.runtime.ring import Ring
from galaxy.runtime.splits import offsets

pytestmark = pytest.mark.dist

FP32 = dict(rtol=1e-5, atol=1e-5)  # GEMMs on row slices and ring sums reorder fp32 adds
FP16_WIRE = dict(rtol=1e-2, atol=1e-2)  # activations or running sums rounded to fp16 (2^-11)

SPLITS = {1: [[5]], 2: [[3, 2], [0, 4]], 3: [[2, 0, 3], [4, 1, 1]], 4: [[3, 0, 2, 1], [0, 5, 0, 1], [1, 3, 1, 2]]}
RING_ORDERS = {1: [(0,)], 2: [(1, 0)], 3: [(0, 1, 2), (2, 0, 1)], 4: [(3, 1, 0, 2)]}
TILES = [1, 2, 3]
OPS = ["all_gather_linear", "linear_reduce_scatter", "project_all_gather", "wire_float16"]
IN_FEATURES, OUT_FEATURES = 3, 5


def cases(world: int):
    """(name, ring order, tokens per ring position, tiles, shape with T for tokens, token dim)."""
    for order in RING_ORDERS[world]:
        for split in SPLITS[world]:
            for tiles in TILES:
                yield (f"ring{order} split{split} tiles{tiles} bsh", order, split, tiles,
                       (2, "T", IN_FEATURES), 1)
    yield (f"split{SPLITS[world][0]} tiles2 th", RING_ORDERS[world][0], SPLITS[world][0], 2,
           ("T", IN_FEATURES), 0)


def run_all_cases(rank: int, world: int) -> dict[str, list[str]]:
    failures = {op: [] for op in OPS}
    for seed, (case, order, split, tiles, shape, dim) in enumerate(cases(world)):
        ring = Ring(order, rank, timeout_s=10)
        me, starts = ring.index, offsets(split)
        gen = torch.Generator().manual_seed(seed)
        weight = torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen)
        bias = None if seed % 2 else torch.randn(OUT_FEATURES, generator=gen)
        (full,) = make(shape, sum(split), seed, 1)
        local = full.narrow(dim, starts[me], split[me])

        got = all_gather_linear(local, weight, bias, split, ring, tiles, dim)
        plain = F.linear(all_gather(local, split, ring, dim), weight, bias)
        check(failures, "all_gather_linear", case,
              lambda: assert_close(got, F.linear(full, weight, bias), **FP32))
        check(failures, "all_gather_linear", case + " vs un-tiled",
              lambda: assert_close(got, plain, **FP32))

        xs = make(shape, sum(split), 1000 + seed, world)  # per ring position: its x_full
        ws = [torch.randn(OUT_FEATURES, IN_FEATURES, generator=gen) for _ in range(world)]
        expected = sum(F.linear(x, w) for x, w in zip(xs, ws)).narrow(dim, starts[me], split[me])
        got = linear_reduce_scatter(xs[me], ws[me], split, ring, tiles, dim)
        plain = reduce_scatter(F.linear(xs[me], ws[me]), split, ring, dim)
        check(failures, "linear_reduce_scatter", case, lambda: assert_close(got, expected, **FP32))
        check(failures, "linear_reduce_scatter", case + " vs un-tiled",
              lambda: assert_close(got, plain, **FP32))

        half = torch.float16
        if min(split) >= 1 and dim == 1:  # sequence-parallel attention: every rank has queries
            _check_project_all_gather(failures, case, local, full, split, ring, tiles, gen)

        got = all_gather_linear(local, weight, bias, split, ring, tiles, dim, wire_dtype=half)
        plain = F.linear(all_gather(local, split, ring, dim, wire_dtype=half), weight, bias)
        check(failures, "wire_float16", case + " all_gather_linear vs un-tiled",
              lambda: assert_close(got, plain, **FP32))
        check(failures, "wire_float16", case + " all_gather_linear",
              lambda: assert_close(got, F.linear(full, weight, bias), **FP16_WIRE))
        got = linear_reduce_scatter(xs[me], ws[me], split, ring, tiles, dim, wire_dtype=half)
        check(failures, "wire_float16", case + " linear_reduce_scatter",
              lambda: assert_close(got, expected, **FP16_WIRE))
    return failures


def _check_project_all_gather(failures, case, local, full, split, ring, tiles, gen) -> None:
    kept_weight, shared_weight = (torch.randn(k, IN_FEATURES, generator=gen) for k in (2, OUT_FEATURES))

    def project(rows):
        return F.linear(local[:, rows], kept_weight), F.linear(local[:, rows], shared_weight)

    kept, shared = project_all_gather(local, project, OUT_FEATURES, split, ring, tiles)
    check(failures, "project_all_gather", case + " kept", lambda: assert_close(kept, F.linear(local, kept_weight), **FP32))
    check(failures, "project_all_gather", case + " shared",
          lambda: assert_close(shared, F.linear(full, shared_weight), **FP32))
    _, shared = project_all_gather(local, project, OUT_FEATURES, split, ring, tiles, torch.float16)
    plain = all_gather(F.linear(local, shared_weight), split, ring, wire_dtype=torch.float16)
    check(failures, "wire_float16", case + " project_all_gather vs un-tiled",
          lambda: assert_close(shared, plain, **FP32))


@pytest.mark.timeout(120)
@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("op", OPS)
def test_overlap_matches_single_process_and_untiled(world, op):
    assert_op_passed(world, run_all_cases, op)
