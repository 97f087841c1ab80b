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

Attending as keys and values arrive (KVATT, runtime's online_attention) hides the exchange behind
the attention core instead: a rank attends to its own block, then to each peer's block once it is
in. `waiting_s` replays that per rank (direct: every block starts at once, arriving after its own
link time; ring: `ring_arrivals`, one step per forwarding hop); the cost takes the rank that waits
longest. The core runs `blockwise_attention_factor` slower than one fused SDPA (measured).
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


# Sequence parallelism attending as keys and values arrive (KVATT, runtime/online_attention.py):
# time of the attention core cut into b key blocks merged by the online softmax / one fused SDPA,
# on one thread, 256 keys, mean over BERT-base, BERT-large and GPT-2-medium shapes and 256 or 128
# queries (python -m benchmarks.attention_blocks; benchmarks/results/attention-blocks). More
# blocks than measured cost what the most did.
BLOCKWISE_ATTENTION_FACTOR = {1: 1.13, 2: 1.41, 3: 1.97, 4: 1.83}


def blockwise_attention_factor(blocks: int) -> float:
    """What attending to `blocks` key blocks one by one costs, relative to one fused SDPA."""
    measured = sorted(BLOCKWISE_ATTENTION_FACTOR)
    return BLOCKWISE_ATTENTION_FACTOR[min(max(blocks, measured[0]), measured[-1])]


def waiting_s(own_s: float, blocks: list[tuple[float, float]]) -> float:
    """Seconds a rank waits for peers when it attends to its own key/value block (`own_s`) and
    then to each block (arrival_s, attend_s) in turn, each as soon as it is in and the one before
    is done: the link time attention compute did not hide. (The transfers start at 0.)"""
    clock = busy = own_s
    for arrival_s, attend_s in blocks:
        clock = max(clock, arrival_s) + attend_s
        busy += attend_s
    return clock - busy


def direct_order(tokens: list[int] | tuple[int, ...], me: int) -> list[int]:
    """Ring positions of the peers whose blocks ring position `me` takes, in the order it waits
    for them (runtime/direct.py: arrival_order): smallest first, ties nearest after `me`."""
    n = len(tokens)
    return sorted((p for p in ((me + k) % n for k in range(1, n)) if tokens[p]), key=lambda p: tokens[p])


def ring_arrivals(attend_s: list[float], step_s: float) -> list[tuple[float, float]]:
    """(arrival_s, attend_s) of the blocks of ring steps 1, 2, ... at a rank: a step's block
    leaves the previous rank when that rank takes it in (it forwards before attending), taken as
    in step with this rank, and one step (`step_s`) later it is here: arrival[s] =
    max(s step, taken[s - 1] + step). `attend_s` starts with the own block's time."""
    arrivals, taken, ready = [], 0.0, attend_s[0]
    for s, attend in enumerate(attend_s[1:], start=1):
        arrival = max(s * step_s, taken + step_s)
        taken = max(ready, arrival)
        ready = taken + attend
        arrivals.append((arrival, attend))
    return arrivals
