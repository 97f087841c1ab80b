"""Tile overlap: how much of a collective's link time hides behind its neighbouring GEMM.

Plans with tiles = 0 run the plain collective, then the GEMM (or the GEMM, then the plain
ReduceScatter): nothing hides, exposed = ring. With tiles = t >= 1 the generated code calls
the runtime's fused ops (runtime/overlap.py), which cut every rank's chunk into t pieces and
run the GEMM of the piece in hand while later pieces move (t = 1: a rank's own chunk is computed
on while the first step moves, and so on round the ring). For all_gather_linear:

    for step in range(n):                              # n ranks, chunk (me - step) in hand
        for piece in the t pieces of that chunk:
            wait for it (step > 0); forward it to the next rank (step < n - 1)
            rows of piece = piece @ w                  # g = G / (n t) seconds each

(linear_reduce_scatter mirrors it: compute a piece's partial, add the one received, send.)
Each rank's link carries (n - 1) t pieces back to back, c seconds each, so ring(t) = (n - 1) t c
(cost/collectives.py: each piece waits for the largest, with its own alpha). With G the rank's
whole GEMM time for the block, an event simulation of both loops gives exactly

    exposed(t) = max(0,  ring(t) + g - G,  c - G / n)     g = G / (n t),  c = ring(t) / ((n - 1) t)

the link-bound tail beyond the GEMM (the last piece's GEMM cannot start before it arrives), or
the wait for the first piece beyond the own chunk's GEMM (n = 2, t = 1: ring - G/2). The
direct algorithm (runtime/direct.py) has no forwarding: every piece is sent at once, and the same
bound holds with ring replaced by the direct collective's link time. This is exact for even splits; with
uneven ones G is taken as the smallest overlappable GEMM in the ring (min over ranks, 0 for a
rank with no heads or columns): a conservative bound that stays linear for the ILP.

Sequence parallelism only (runtime's project_all_gather) overlaps differently: a rank projects
its own tokens' keys and values in t tiles and sends each as soon as it is made, so the first
ring step starts one tile's projection (G / t) in, and only what it needs beyond the projection
shows. The later n - 2 steps forward what arrived, after the projection (gloo reports a receive
complete only when waited on), so they show whole:

    exposed(t) = max(0, ring(t) / (n - 1) - G (1 - 1/t)) + ring(t) (n - 2) / (n - 1)

(t = 1 is the plain gather after the projection.) G is again the smallest in the ring.
"""
from __future__ import annotations


def exposed_s(ring_s: float, tiles: int, gemm_s: float, ring_size: int) -> float:
    """Link seconds not hidden: `ring_s` = ring(tiles), `gemm_s` = the overlappable GEMM G."""
    if ring_size < 2:
        return 0.0
    if tiles < 1:
        return ring_s
    piece_gemm = gemm_s / (ring_size * tiles)
    piece_link = ring_s / ((ring_size - 1) * tiles)
    return max(0.0, ring_s + piece_gemm - gemm_s, piece_link - gemm_s / ring_size)


def projection_exposed_s(ring_s: float, tiles: int, projection_s: float, ring_size: int) -> float:
    """Link seconds not hidden when keys and values are sent tile by tile as they are projected."""
    if ring_size < 2:
        return 0.0
    first_step = ring_s / (ring_size - 1)
    return max(0.0, first_step - projection_s * (1 - 1 / max(tiles, 1))) + ring_s - first_step
