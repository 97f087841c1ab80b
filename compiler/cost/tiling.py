"""What token tiles cost a GEMM: the fused collectives compute on pieces of the sequence.

A GEMM on fewer rows runs slower per row (less reuse of each weight tile it loads). The fused
all-gather and reduce-scatter (runtime/overlap.py, runtime/direct.py) compute their GEMM on
pieces of S / (n t) rows on average (n ranks, t tiles; t = 0 runs one GEMM on all S rows), so
the block's GEMM next to them takes

    slowdown = speed(S) / speed(S / (n t))     times as long     (>= 1)

(the sequence-parallel key/value projection: speed(S / n) / speed(S / (n t)), its own tokens in
t pieces)
with speed(rows) a device's GEMM speed by rows, piecewise linear in log2(rows) between measured
points and proportional to rows below the first one (too few rows to fill the vector units).
galaxy-profile measures each device's curve; DEFAULT_ROWS_SPEED is what benchmarks/tile_gemm.py
measured for BERT's projections on one core (docs/PERFORMANCE.md, section 4).
"""
from __future__ import annotations

import math
from typing import Sequence

DEFAULT_ROWS_SPEED = ((16, 0.46), (32, 0.66), (64, 0.84), (128, 0.92), (256, 1.0))


def rows_speed(curve: Sequence[tuple[int, float]], rows: float) -> float:
    """GEMM speed at `rows` rows on a device with `curve` (empty: the default)."""
    points = tuple(curve) or DEFAULT_ROWS_SPEED
    first_rows, first_speed = points[0]
    if rows <= first_rows:
        return first_speed * max(rows, 1.0) / first_rows
    for (r0, s0), (r1, s1) in zip(points, points[1:]):
        if rows <= r1:
            f = (math.log2(rows) - math.log2(r0)) / (math.log2(r1) - math.log2(r0))
            return s0 + f * (s1 - s0)
    return points[-1][1]


def tile_slowdown(curve: Sequence[tuple[int, float]], rows: float, pieces: int) -> float:
    """How many times longer a GEMM of `rows` rows takes when computed in `pieces` pieces."""
    if pieces <= 1:
        return 1.0
    return max(1.0, rows_speed(curve, rows) / rows_speed(curve, rows / pieces))


def fused_pieces(action_op: str, tiles: int, ranks: int) -> int:
    """Pieces a fused action cuts its GEMM into: AG/RS one per rank and tile (none at tiles 0);
    KVAG projects a rank's own tokens in `tiles` pieces."""
    if ranks < 2 or tiles < 1:
        return 1
    return tiles if action_op == "KVAG" else ranks * tiles
