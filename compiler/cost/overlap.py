"""Tile overlap: how much of a collective's link time hides behind its neighbouring GEMM.

Untiled, an AllGather finishes before the GEMM that consumes it starts:

    x = all_gather(x_local)                  # ring(1) seconds on the link
    y = x @ w                                 # G seconds of GEMM

Tiled into t sequence tiles, the GEMM of tile i runs while tile i + 1 is on the link:

    for i in range(t):
        x_i = all_gather(x_local[tile i])     # c = ring(t) / t per tile (with its own alphas)
        y_i = x_i @ w                         # g = G / t per tile, overlaps the next transfer

A two-stage pipeline of t items takes c + g + (t - 1) max(c, g), so the link time left exposed
beyond the GEMM's own G is

    exposed(t) = max(ring(t) - (t - 1) / t * G,  ring(t) / t)          (= ring(1) for t = 1)

The first tile's transfer can never hide; more tiles pay more alphas. A ReduceScatter after a
GEMM mirrors this (the GEMM of tile i + 1 runs while tile i reduces). The rank with the least
overlappable GEMM (min over the ring, 0 for a rank with no heads or columns) decides G: a ring
step waits for every rank.
"""
from __future__ import annotations


def exposed_s(ring_s: float, tiles: int, gemm_s: float) -> float:
    """Link seconds not hidden: `ring_s` is ring(t) (all tiles), `gemm_s` the overlappable G."""
    if tiles <= 1:
        return ring_s
    return max(ring_s - (tiles - 1) / tiles * gemm_s, ring_s / tiles)
