"""exposed_s against its slow twin: an event-by-event simulation of the tiled loops."""
from __future__ import annotations

import random

import pytest

from galaxy.compiler.cost.overlap import exposed_s


def simulate_all_gather_then_gemm(ring_s: float, tiles: int, gemm_s: float) -> float:
    """Tile i's GEMM starts when its transfer is done and the previous GEMM is; link time left."""
    link_done = gemm_done = 0.0
    for _ in range(tiles):
        link_done += ring_s / tiles
        gemm_done = max(gemm_done, link_done) + gemm_s / tiles
    return gemm_done - gemm_s


def simulate_gemm_then_reduce_scatter(ring_s: float, tiles: int, gemm_s: float) -> float:
    link_done = gemm_done = 0.0
    for _ in range(tiles):
        gemm_done += gemm_s / tiles
        link_done = max(link_done, gemm_done) + ring_s / tiles
    return link_done - gemm_s


@pytest.mark.parametrize("seed", range(20))
def test_matches_simulation(seed):
    rng = random.Random(seed)
    ring_s, gemm_s, tiles = rng.uniform(0, 1), rng.uniform(0, 1), rng.choice([1, 2, 4, 8])
    assert exposed_s(ring_s, tiles, gemm_s) == pytest.approx(simulate_all_gather_then_gemm(ring_s, tiles, gemm_s))
    assert exposed_s(ring_s, tiles, gemm_s) == pytest.approx(simulate_gemm_then_reduce_scatter(ring_s, tiles, gemm_s))


def test_untiled_hides_nothing_and_first_tile_never_hides():
    assert exposed_s(0.3, 1, 10.0) == 0.3
    assert exposed_s(0.8, 4, 10.0) == pytest.approx(0.2)
