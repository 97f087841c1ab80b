"""Alpha-beta cost of the ring collectives, the gather to rank 0, and communication CPU.

A ring of n ranks moves an uneven AllGather or ReduceScatter in n - 1 steps. At every step each
rank passes one chunk to its successor, and the step ends when the slowest transfer ends, so
each step costs the largest chunk over the worst ring link:

    step(c)     = max over ring links (i, j) of  alpha[i][j] + beta[i][j] * c
    ring(t)     = t * (n - 1) * step(m b / t)      all t tiles, one after the other
    m = max tokens of a rank, b = token_wire_bytes, t = tiles (1 = untiled)

Tiling adds (t - 1)(n - 1) alphas. Moving bytes costs CPU on every rank (gloo copies, TCP). In
one ring collective rank r sends every chunk but its successor's and receives every chunk but
its own (AllGather; mirrored in ReduceScatter), 2 S b - (x[r] + x[r+1]) b in all: 2 (n-1) S b over
the ring. Each rank is charged the mean,

    cpu[r] = kappa[r] * 2 (n - 1) / n * S b    kappa = comm_cpu_s_per_byte, S tokens

exact for n = 2 and for even token splits, and free of the ring neighbours (so linear in the
ILP): the token split then pays in link time (largest chunk), not in CPU. Gathering the final
hidden states to rank 0 sends each other rank's tokens straight to it, one after another:

    gather = sum over r != 0 of alpha[r][0] + beta[r][0] x[r] b,   plus kappa[0] (S - x[0]) b CPU.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from galaxy.compiler.cost.table import CostTable


def ring_links(ring: Sequence[int]) -> list[tuple[int, int]]:
    """(sender, receiver) device pairs of a ring, wrap-around included; none for one rank."""
    n = len(ring)
    if n < 2:
        return []
    return [(ring[j], ring[(j + 1) % n]) for j in range(n)]


def ring_step_s(table: "CostTable", ring: Sequence[int], chunk_bytes: float) -> float:
    return max((table.alpha_s[a][b] + table.beta_s_per_byte[a][b] * chunk_bytes
                for a, b in ring_links(ring)), default=0.0)


def ring_collective_s(table: "CostTable", ring: Sequence[int], max_tokens: int, tiles: int = 1,
                      token_bytes: float | None = None) -> float:
    """Link time of one ring AllGather or ReduceScatter, all tiles included (`token_bytes`: bytes
    per token if not one token of the hidden stream)."""
    tiles = max(tiles, 1)  # tiles 0: the plain collective moves whole chunks
    chunk = max_tokens * (token_bytes or table.token_wire_bytes) / tiles
    return tiles * (len(ring) - 1) * ring_step_s(table, ring, chunk) if len(ring) > 1 else 0.0


def collective_cpu_s(table: "CostTable", device: int, ring_size: int, token_bytes: float | None = None) -> float:
    """CPU seconds `device` spends moving the bytes of one ring collective of `ring_size` ranks."""
    if ring_size < 2:
        return 0.0
    moved = 2 * (ring_size - 1) / ring_size * table.tokens * (token_bytes or table.token_wire_bytes)
    return table.comm_cpu_s_per_byte[device] * moved


def gather_link_s(table: "CostTable", root: int, peers: Sequence[tuple[int, int]], token_bytes: float | None = None,
                  outward: bool = False) -> float:
    """Link time to move each (device, tokens) in `peers` to `root` (or from it, `outward`), one
    after another (`token_bytes`: bytes per token if not one token of the hidden stream)."""
    per_token = token_bytes or table.token_wire_bytes

    def link(d: int) -> tuple[float, float]:
        a, b = (root, d) if outward else (d, root)
        return table.alpha_s[a][b], table.beta_s_per_byte[a][b]

    return sum(link(d)[0] + link(d)[1] * x * per_token for d, x in peers if d != root)
