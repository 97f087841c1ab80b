"""Collectives of a decode step: all-reduce over any ring of ranks, and a whole-tensor broadcast.

A decode step moves one token, so its all-reduces carry a few KB and their cost is the number of
messages in a row times the link latency (cost/actions.py prices each algorithm):

    ring    reduce-scatter then all-gather of 1/n of the tensor each (collectives.py):
            2 (n - 1) messages in a row; the fewest bytes per link
    star    every rank sends its partial sum to the ring's first rank, which adds them up and
            sends the sum back: 2 messages in a row, the first rank's link carries 2 (n - 1)
    direct  every rank sends its partial sum to every other rank and adds up what it receives:
            1 message in a row, n - 1 on every link

Every rank adds the partial sums in ring order, so all ranks hold the same bits (star: the
first rank's sum travels). With `wire_dtype` what travels is rounded, and so is each rank's own
partial before it is added, for the same reason. `all_reduce_naive` is the slow twin.

`broadcast_hidden` sends tensors whole from one ring position to every other (a decode stage's
layer inputs: only rank 0 holds the embeddings).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .collectives import all_gather, reduce_scatter
from .p2p import irecv, isend, recv, send
from .ring import Ring
from .splits import split_sizes
from .timing import timed

ALGORITHMS = ("ring", "star", "direct")


def all_reduce_p2p(x: torch.Tensor, ring: Ring, algorithm: str = "ring",
                   wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The sum of `x` over the ranks of `ring` on every one of them, by `algorithm`."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"all-reduce algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    if ring.size == 1:
        return x.clone()
    return {"ring": _ring, "star": _star, "direct": _direct}[algorithm](x.contiguous(), ring, wire_dtype)


def _ring(x: torch.Tensor, ring: Ring, wire: torch.dtype | None) -> torch.Tensor:
    flat = x.reshape(1, -1)
    sizes = split_sizes(flat.shape[1], [1] * ring.size)
    mine = reduce_scatter(flat, sizes, ring, dim=1, wire_dtype=wire)
    return all_gather(mine, sizes, ring, dim=1, wire_dtype=wire).view_as(x)


def _star(x: torch.Tensor, ring: Ring, wire: torch.dtype | None) -> torch.Tensor:
    wired = x.to(wire or x.dtype)
    leader = ring.ranks[0]
    if ring.rank != leader:
        sent = isend(wired, leader, ring, 0, "all-reduce (star): partial sum to the first rank")
        total = recv(torch.empty_like(wired), leader, ring, "all-reduce (star): the sum", tag=1)
        sent.wait()
        return total.to(x.dtype)
    pending = [irecv(torch.empty_like(wired), peer, ring, 0, "all-reduce (star): partial sum")
               for peer in ring.ranks[1:]]
    total = wired.to(x.dtype).clone()
    for transfer in pending:
        total += transfer.wait().to(x.dtype)
    back = total.to(wire or x.dtype)
    for transfer in [isend(back, peer, ring, 1, "all-reduce (star): the sum") for peer in ring.ranks[1:]]:
        transfer.wait()
    return back.to(x.dtype)


def _direct(x: torch.Tensor, ring: Ring, wire: torch.dtype | None) -> torch.Tensor:
    wired = x.to(wire or x.dtype)
    peers = [r for r in ring.ranks if r != ring.rank]
    received = {peer: irecv(torch.empty_like(wired), peer, ring, 0, "all-reduce (direct)") for peer in peers}
    sends = [isend(wired, peer, ring, 0, "all-reduce (direct)") for peer in peers]
    total = None
    for rank in ring.ranks:  # ring order on every rank: the same sum everywhere
        part = (wired if rank == ring.rank else received[rank].wait()).to(x.dtype)
        total = part.clone() if total is None else total.add_(part)
    for transfer in sends:
        transfer.wait()
    return total


@timed("broadcast_hidden")
def broadcast_hidden(tensors: Sequence[torch.Tensor] | None, ring: Ring, shapes: Sequence[Sequence[int]],
                     src: int = 0, dtype: torch.dtype = torch.float32,
                     wire_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Every tensor ring position `src` holds (the others pass None), whole on every rank of the ring."""
    root = ring.rank_at(src)
    if ring.rank == root:
        if tensors is None or len(tensors) != len(shapes):
            raise ValueError(f"broadcast_hidden on the source rank needs {len(shapes)} tensors")
        wired = [t.to(wire_dtype or t.dtype).contiguous() for t in tensors]
        sends = [isend(t, peer, ring, i, f"broadcast of the layer inputs [{i}]")
                 for i, t in enumerate(wired) for peer in ring.ranks if peer != root]
        for transfer in sends:
            transfer.wait()
        return [t.to(dtype, copy=True) for t in wired]
    pending = [irecv(torch.empty(tuple(shape), dtype=wire_dtype or dtype), root, ring, i,
                     f"broadcast of the layer inputs from {ring.describe(root)} [{i}]")
               for i, shape in enumerate(shapes)]
    return [transfer.wait().to(dtype) for transfer in pending]


def all_reduce_naive(x: torch.Tensor, ring: Ring) -> torch.Tensor:
    """Slow twin: each rank in turn sends its whole tensor to every other; all add in ring order."""
    parts = []
    for src in ring.ranks:
        if src == ring.rank:
            for peer in ring.ranks:
                if peer != ring.rank:
                    send(x.contiguous(), peer, ring, "all_reduce_naive")
            parts.append(x)
        else:
            parts.append(recv(torch.empty_like(x), src, ring, "all_reduce_naive"))
    total = parts[0].clone()
    for part in parts[1:]:
        total += part
    return total
