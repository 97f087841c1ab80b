"""Hand the hidden states from one pipeline stage to the next (EdgePipe-style plans).

A stage's ranks hold the hidden states split by tokens. Handing over: the stage's leader
(ring index 0) gathers each tensor whole and sends it to every rank of the next stage, which
keep their own tokens. Shapes are fixed at compile time, so receivers allocate them up front.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .collectives import gather_tokens
from .p2p import recv, send
from .ring import Ring

_TAG = 7  # keeps stage hand-offs apart from ring traffic on the same pair of ranks


def send_to_ranks(tensors: Sequence[torch.Tensor | None], tokens_per_rank: Sequence[int], ring: Ring,
                  world: Ring, destinations: Sequence[int], what: str) -> None:
    """Gather each tensor on this stage's leader, which sends it whole to every destination rank."""
    whole = [gather_tokens(t, tokens_per_rank, ring, dst=0) for t in tensors]
    if ring.index != 0:
        return
    for dst in destinations:
        for i, tensor in enumerate(whole):
            send(tensor.contiguous(), dst, world, f"{what} [{i}]", tag=_TAG)


def receive_whole(shapes: Sequence[Sequence[int]], source: int, world: Ring, what: str,
                  dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    """Receive whole tensors of the given shapes from `source` (the previous stage's leader)."""
    return [recv(torch.empty(tuple(shape), dtype=dtype), source, world, f"{what} [{i}]", tag=_TAG)
            for i, shape in enumerate(shapes)]
