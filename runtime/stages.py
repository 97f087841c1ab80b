"""Hand the hidden states from one pipeline stage to the next (EdgePipe-style plans).

A stage's ranks hold the hidden states split by tokens. Handing over: the stage's leader
(ring index 0) gathers each tensor whole and sends it to every rank of the next stage, which
keep their own tokens. Shapes are fixed at compile time, so receivers allocate them up front.

Sends are asynchronous: while requests stream (runtime/stream.py) a stage hands request i on
and starts on request i+1 while the next stage is still busy, and the last stage hands the
head's inputs back to rank 0 while rank 0 is running stage 0 of a later request. Blocking
sends would deadlock that chain (gloo completes a send only once its receive is posted). A
`Handoff` waits for the previous request's sends (with the timeout, naming the peer) before
posting the next, so at most one request per destination is in flight, and `flush()` waits
for the last ones at the end.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .collectives import gather_hidden
from .p2p import Transfer, irecv, isend
from .ring import Ring

_TAG = 7  # tensor i of a hand-off travels with tag _TAG + i; stage pairs never carry ring traffic


class Handoff:
    """This rank's hand-offs between stages, over `world` (all ranks; its timeout applies)."""

    def __init__(self, world: Ring):
        self.world = world
        self._in_flight: list[Transfer] = []

    def send(self, tensors: Sequence[torch.Tensor | None], tokens_per_rank: Sequence[int] | None, ring: Ring,
             destinations: Sequence[int], what: str, wire_dtype: torch.dtype | None = None) -> None:
        """Gather the tensors on this stage's leader, which posts each whole to every destination rank
        (in `wire_dtype`, if given). `tokens_per_rank` None: every rank of the stage holds them whole
        (an all-reducing stage), so the leader sends its own."""
        whole = tensors if tokens_per_rank is None else gather_hidden(tensors, tokens_per_rank, ring, dst=0,
                                                                         wire_dtype=wire_dtype)
        if ring.index != 0:
            return
        self.flush()  # the previous request's hand-off: its buffers are free once these complete
        self._in_flight = [isend(tensor.to(wire_dtype or tensor.dtype).contiguous(), dst, self.world, _TAG + i,
                                 f"{what} [{i}]")
                           for dst in destinations for i, tensor in enumerate(whole)]

    def receive(self, shapes: Sequence[Sequence[int]], source: int, what: str,
                dtype: torch.dtype = torch.float32, wire_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """Whole tensors of the given shapes from `source` (another stage's leader), as `dtype`."""
        pending = [irecv(torch.empty(tuple(shape), dtype=wire_dtype or dtype), source, self.world, _TAG + i,
                         f"{what} [{i}]") for i, shape in enumerate(shapes)]
        return [transfer.wait().to(dtype) for transfer in pending]

    def flush(self) -> None:
        """Wait until every posted send has been received."""
        in_flight, self._in_flight = self._in_flight, []
        for transfer in in_flight:
            transfer.wait()
