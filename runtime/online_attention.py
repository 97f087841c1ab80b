"""Sequence-parallel attention that attends to key/value blocks as they arrive (ring attention).

In a sequence-parallel layer every rank holds the queries of its own tokens, and attention needs
every rank's keys and values. Instead of gathering them all and then running one SDPA, a rank
sends its keys and values to its peers and attends its queries to its own block first, while the
peers' blocks are in flight, then to each peer's block as it comes in. The partial results are
merged with an online softmax: each block gives its output normalised over its own keys and
the log-sum-exp of its scores, and

    lse = logaddexp(lse_a, lse_b)
    out = out_a exp(lse_a - lse) + out_b exp(lse_b - lse)

is the attention over the keys of both (exact up to rounding). A query row with no visible key in
a block (a causal or padding mask) has lse = -inf there and takes nothing from it; a row with no
visible key at all gives 0, as SDPA does.

Two exchanges (`algorithm`), every receive posted before the first block is attended:
    direct  each rank sends its block to every peer that has queries, at once; blocks are taken
            smallest first (they should land first; gloo reports a receive complete only once it
            is waited on, so arrival cannot be polled)
    ring    n - 1 steps: a rank forwards the block it just received to the next rank, then attends
            to it, so each step's transfer hides behind the previous block's attention
A rank with no tokens sends nothing and attends to nothing (in a ring it still forwards).

`wire_dtype` casts what travels; the own block is rounded the same way, so every rank attends to
the same keys and values. Every wait has the ring's timeout (p2p.py). The slow twin is the plain
loop in `online_attention`'s docstring: all-gather the keys and values, then one SDPA.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .collectives import check_split
from .direct import arrival_order
from .p2p import Transfer, irecv, isend
from .ring import Ring
from .splits import offsets
from .timing import timed

ALGORITHMS = ("ring", "direct")
_DIRECT_TAG = 0  # one message per pair and direction in a call


def _fused_kernel():
    """The CPU flash-attention kernel that also returns the log-sum-exp of each query row, or
    None on a torch without it (then `attend_block` computes the same in plain torch)."""
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


_FUSED = _fused_kernel()


def additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`mask` as SDPA reads it (bool: True attends; float: added to the scores), in additive form."""
    if mask is None or mask.dtype != torch.bool:
        return None if mask is None else mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, float("-inf"))


def attend_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of q [B, H, x, D] to one block of keys and values [B, H_kv, y, D] (y > 0; H a
    multiple of H_kv, as with enable_gqa), `mask` additive, broadcastable to [B, H, x, y].
    Returns (output normalised over this block, log-sum-exp of the scaled, masked scores [B, H, x])."""
    if _FUSED is not None and q.dtype in (torch.float32, torch.float64):
        out, lse = _FUSED(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
        if mask is not None:  # the kernel reports 0 for a row that sees no key here: it is -inf
            blind = torch.isneginf(mask).all(dim=-1).expand(lse.shape)
            lse = lse.masked_fill(blind, float("-inf"))
        return out, lse
    groups = q.shape[1] // k.shape[1]
    scores = q @ k.repeat_interleave(groups, dim=1).transpose(-1, -2) * scale
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, dim=-1)
    weights = torch.exp(scores - lse.masked_fill(torch.isneginf(lse), 0.0).unsqueeze(-1))
    return weights @ v.repeat_interleave(groups, dim=1), lse


class OnlineSoftmax:
    """The running output and log-sum-exp of a query block over the key blocks merged so far."""

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def add(self, out: torch.Tensor, lse: torch.Tensor) -> None:
        if self.out is None:
            self.out, self.lse = out.clone(), lse
            return
        total = torch.logaddexp(self.lse, lse)
        safe = total.masked_fill(torch.isneginf(total), 0.0)  # no key seen yet: both weights 0
        self.out.mul_(torch.exp(self.lse - safe).unsqueeze(-1)).add_(out * torch.exp(lse - safe).unsqueeze(-1))
        self.lse = total


def blockwise_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                        scale: float, key_blocks: Sequence[int]) -> torch.Tensor:
    """SDPA of q to k and v cut along the keys into `key_blocks` (sizes, 0 allowed), merged with
    the online softmax: the same result as one SDPA, one block at a time."""
    merged = OnlineSoftmax()
    mask = additive_mask(mask, q.dtype)
    for start, size in zip(offsets(key_blocks), key_blocks):
        if size:
            merged.add(*attend_block(q, k.narrow(2, start, size), v.narrow(2, start, size),
                                     None if mask is None else mask.narrow(-1, start, size), scale))
    return merged.out if merged.out is not None else q.new_zeros(q.shape[:-1] + v.shape[-1:])


def _heads(kv: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, y, 2 W] keys then values -> k, v as [B, W / head_dim, y, head_dim]."""
    batch, tokens, width = kv.shape
    k, v = kv.split(width // 2, dim=-1)
    return tuple(t.view(batch, tokens, -1, head_dim).transpose(1, 2) for t in (k, v))


@timed("online_attention")
def online_attention(q: torch.Tensor, kv_local: torch.Tensor, mask: torch.Tensor | None,
                     tokens_per_rank: Sequence[int], ring: Ring, *, head_dim: int, scale: float,
                     algorithm: str = "ring", wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Attention of this rank's queries q [B, H, x, D] to every rank's keys and values, attending
    to each rank's block as it arrives. `kv_local` [B, x, 2 W] holds this rank's keys then values
    (W = H_kv D features each); `mask` (bool or additive, or None) has this rank's query rows and
    every key of the ring, [..., x, S]. Returns [B, H, x, D]. The plain loop it is equivalent to:

        kv = all_gather(kv_local, tokens_per_rank, ring, wire_dtype=wire_dtype)
        k, v = keys and values of kv, [B, H_kv, S, D]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                              enable_gqa=True)
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"online_attention: algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    sizes = check_split(tokens_per_rank, ring)
    me = ring.index
    if kv_local.shape[1] != sizes[me] or q.shape[2] != sizes[me]:
        raise ValueError(f"online_attention on rank {ring.rank}: expected {sizes[me]} tokens, got queries "
                         f"{tuple(q.shape)} and keys/values {tuple(kv_local.shape)}")
    if mask is not None and mask.shape[-1] != sum(sizes):
        raise ValueError(f"online_attention on rank {ring.rank}: the mask has {mask.shape[-1]} keys, "
                         f"the ring {sum(sizes)} tokens")
    wire = wire_dtype if wire_dtype and ring.size > 1 else kv_local.dtype  # like all_gather: no cast alone
    exchange = _DirectExchange if algorithm == "direct" else _RingExchange
    blocks = exchange(kv_local, sizes, wire, ring)
    starts = offsets(sizes)
    mask = additive_mask(mask, q.dtype)
    merged = OnlineSoftmax()
    for position, kv in blocks:  # own block first, then the peers' as they come in
        if sizes[me]:
            k, v = _heads(kv.to(q.dtype), head_dim)
            block_mask = None if mask is None else mask.narrow(-1, starts[position], sizes[position])
            merged.add(*attend_block(q, k, v, block_mask, scale))
    blocks.finish()
    if merged.out is None:  # no queries here (or no keys anywhere)
        return q.new_zeros(q.shape[:-1] + (head_dim,))
    return merged.out


class _DirectExchange:
    """Every receive posted, then this rank's block sent to every peer with queries. Iterating
    yields (ring position, block): the own block, then each peer's, smallest first."""

    def __init__(self, kv_local: torch.Tensor, sizes: list[int], wire: torch.dtype, ring: Ring) -> None:
        self.sizes, self.ring, me = sizes, ring, ring.index
        batch, width = kv_local.shape[0], kv_local.shape[2]
        senders = arrival_order(sizes, me) if sizes[me] else []
        self.recvs = {src: irecv(kv_local.new_empty((batch, sizes[src], width), dtype=wire), ring.rank_at(src),
                                 ring, _DIRECT_TAG, f"online_attention keys and values from ring position {src}")
                      for src in senders}
        self.own = kv_local.to(wire).contiguous()
        receivers = [p for p in range(ring.size) if p != me and sizes[p]] if sizes[me] else []
        self.sends = [isend(self.own, ring.rank_at(dst), ring, _DIRECT_TAG,
                            f"online_attention keys and values to ring position {dst}") for dst in receivers]

    def __iter__(self):
        yield self.ring.index, self.own
        for src, transfer in self.recvs.items():
            yield src, transfer.wait()

    def finish(self) -> None:
        for transfer in self.sends:
            transfer.wait()


class _RingExchange:
    """n - 1 ring steps, every receive posted up front: at step s the block of ring position
    me - s comes from the previous rank and is forwarded to the next (s < n - 1) before it is
    yielded. Empty blocks are skipped on both sides."""

    def __init__(self, kv_local: torch.Tensor, sizes: list[int], wire: torch.dtype, ring: Ring) -> None:
        self.sizes, self.ring, n, me = sizes, ring, ring.size, ring.index
        batch, width = kv_local.shape[0], kv_local.shape[2]
        self.recvs: dict[int, Transfer] = {}
        for step in range(1, n):
            source = (me - step) % n
            if sizes[source]:
                self.recvs[step] = irecv(kv_local.new_empty((batch, sizes[source], width), dtype=wire),
                                         ring.prev_rank, ring, step - 1, f"online_attention ring step {step - 1}")
        self.own = kv_local.to(wire).contiguous()
        self.sends = [isend(self.own, ring.next_rank, ring, 0, "online_attention ring step 0")] \
            if n > 1 and sizes[me] else []

    def __iter__(self):
        n, me = self.ring.size, self.ring.index
        yield me, self.own
        for step, transfer in self.recvs.items():
            block = transfer.wait()
            if step < n - 1:
                self.sends.append(isend(block, self.ring.next_rank, self.ring, step,
                                        f"online_attention ring step {step}"))
            yield (me - step) % n, block

    def finish(self) -> None:
        for transfer in self.sends:
            transfer.wait()
