"""exposed_s against its slow twin: an event simulation of the runtime's fused loops."""
from __future__ import annotations

import random

import pytest

from galaxy.compiler.cost.overlap import exposed_s


def simulate(n: int, tiles: int, piece_link_s: float, piece_gemm_s: float, reduce_scatter: bool) -> float:
    """Every rank runs runtime/overlap.py's loop on one thread; a rank's sends share its link.

    all_gather_linear: wait for a piece (step > 0), forward it (step < n - 1), GEMM it.
    linear_reduce_scatter: GEMM a piece, add the received partial (step > 0), send (step < n - 1).
    Returns the time beyond the GEMMs (n * tiles pieces of piece_gemm_s on each rank).
    """
    thread, link, arrives = [0.0] * n, [0.0] * n, {}
    for step in range(n):
        for r in range(n):
            for t in range(tiles):
                incoming = arrives[(r - 1) % n, step - 1, t] if step > 0 else 0.0
                if reduce_scatter:
                    thread[r] = max(thread[r] + piece_gemm_s, incoming)
                else:
                    thread[r] = max(thread[r], incoming)
                if step < n - 1:
                    link[r] = max(link[r], thread[r]) + piece_link_s
                    arrives[r, step, t] = link[r]
                if not reduce_scatter:
                    thread[r] += piece_gemm_s
    return max(max(thread), max(link)) - n * tiles * piece_gemm_s


@pytest.mark.parametrize("seed", range(40))
def test_matches_simulation(seed):
    rng = random.Random(seed)
    n, tiles = rng.randint(2, 6), rng.choice([1, 2, 4, 8])
    piece_link, piece_gemm = rng.uniform(0, 1), rng.uniform(0, 1) * rng.choice([0.1, 1, 10])
    ring_s, gemm_s = (n - 1) * tiles * piece_link, n * tiles * piece_gemm
    for reduce_scatter in (False, True):
        assert exposed_s(ring_s, tiles, gemm_s, n) == pytest.approx(
            simulate(n, tiles, piece_link, piece_gemm, reduce_scatter), abs=1e-12)


def test_untiled_hides_nothing_and_one_rank_has_no_link():
    assert exposed_s(0.3, 0, 10.0, 3) == 0.3
    assert exposed_s(0.3, 4, 10.0, 1) == 0.0
    assert exposed_s(0.8, 4, 0.0, 2) == pytest.approx(0.8)
