"""Tile-based overlap: ring collectives fused with the GEMM next to them.

While a ring step moves one piece of the sequence, the GEMM works on the piece already in
hand, so link time hides behind compute. `tiles` cuts every rank's chunk into that many
sub-tiles (uneven, via split_sizes; a tile may be empty) so pieces are forwarded as soon as
they arrive and the pipeline fills sooner. tiles=1 still overlaps across ring steps.

`project_all_gather` is the sequence-parallel counterpart: it computes this rank's keys and
values tile by tile, and each tile starts round the ring while the next one is projected.

Tile t of step s travels with tag s * tiles + t; both sides derive the same tiles from
`tokens_per_rank`, so empty tiles are skipped consistently. All receives are posted up
front; every wait has the ring's timeout (p2p.py).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .collectives import check_split, with_tokens
from .p2p import Transfer, irecv, isend
from .ring import Ring
from .splits import offsets, split_sizes
from .timing import timed


def token_tiles(tokens_per_rank: Sequence[int], tiles: int) -> list[list[tuple[int, int]]]:
    """Per ring position, its tiles as (global start token, length); lengths may be 0."""
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    result = []
    for start, size in zip(offsets(tokens_per_rank), tokens_per_rank):
        lengths = split_sizes(size, [1] * tiles)
        result.append([(start + off, length) for off, length in zip(offsets(lengths), lengths)])
    return result


def _token_dim(x: torch.Tensor, dim: int) -> int:
    dim = dim % x.dim()
    if dim == x.dim() - 1:
        raise ValueError("the token dim cannot be the last dim: F.linear acts on it")
    return dim


def linear_into(rows: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """rows[...] = F.linear(x, weight, bias), written in place when `rows` is contiguous (a token
    range of a batch-1 output), saving the copy of a temporary (the same addmm F.linear runs)."""
    if rows.numel() == 0:  # no tokens, or a rank holding no heads or columns of this GEMM
        return
    if not rows.is_contiguous() or not x.is_contiguous() or x.dtype != rows.dtype:
        rows.copy_(F.linear(x, weight, bias))
        return
    flat_x, flat_rows = x.view(-1, x.shape[-1]), rows.view(-1, rows.shape[-1])
    if bias is None:
        torch.mm(flat_x, weight.t(), out=flat_rows)
    else:
        torch.addmm(bias, flat_x, weight.t(), out=flat_rows)


@timed("all_gather_linear")
def all_gather_linear(x_local: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      tokens_per_rank: Sequence[int], ring: Ring, tiles: int = 1, dim: int = 1,
                      wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`F.linear(all_gather(x_local, ..., wire_dtype), weight, bias)` with the GEMM overlapped.

    The plain un-tiled loop it is equivalent to (n = ring.size, me = ring.index):

        chunk_in_hand = x_local
        for step in range(n):
            chunk = (me - step) % n                        # whose tokens are in hand
            if step < n - 1:
                start: send chunk_in_hand to next; receive chunk (me - step - 1) from prev
            out[tokens of chunk] = F.linear(chunk_in_hand, weight, bias)   # while it moves
            if step < n - 1:
                chunk_in_hand = wait for the receive

    With tiles > 1 each chunk travels as `tiles` pieces; each piece is forwarded as soon as
    it arrives and its rows are computed while the later pieces are still on the wire.
    """
    sizes = check_split(tokens_per_rank, ring)
    dim = _token_dim(x_local, dim)
    if x_local.shape[dim] != sizes[ring.index]:
        raise ValueError(f"all_gather_linear on rank {ring.rank}: expected {sizes[ring.index]} "
                         f"tokens along dim {dim}, got shape {tuple(x_local.shape)}")
    if ring.size == 1:
        return F.linear(x_local, weight, bias)
    n, me, wire = ring.size, ring.index, wire_dtype or x_local.dtype
    pieces = token_tiles(sizes, tiles)
    out = x_local.new_empty(with_tokens(x_local, dim, sum(sizes))[:-1] + [weight.shape[0]])
    recvs: dict[tuple[int, int], Transfer] = {}
    for step in range(1, n):
        for t, (_, length) in enumerate(pieces[(me - step) % n]):
            if length:
                buffer = x_local.new_empty(with_tokens(x_local, dim, length), dtype=wire)
                recvs[step, t] = irecv(buffer, ring.prev_rank, ring, (step - 1) * tiles + t,
                                       f"all_gather_linear step {step - 1} tile {t}")
    own = x_local.to(wire)
    my_start = pieces[me][0][0]
    sends = []
    for step in range(n):
        for t, (start, length) in enumerate(pieces[(me - step) % n]):
            if not length:
                continue
            if step == 0:
                piece = own.narrow(dim, start - my_start, length).contiguous()
            else:
                piece = recvs[step, t].wait()
            if step < n - 1:
                sends.append(isend(piece, ring.next_rank, ring, step * tiles + t,
                                   f"all_gather_linear step {step} tile {t}"))
            linear_into(out.narrow(dim, start, length), piece.to(x_local.dtype), weight, bias)
    for transfer in sends:
        transfer.wait()
    return out


@timed("linear_reduce_scatter")
def linear_reduce_scatter(x_full: torch.Tensor, weight: torch.Tensor,
                          tokens_per_rank: Sequence[int], ring: Ring, tiles: int = 1, dim: int = 1,
                          wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`reduce_scatter(F.linear(x_full, weight), ..., wire_dtype)` with the GEMM overlapped.

    No bias: it belongs after the sum (add it once, on the reduced tokens). The plain
    un-tiled loop it is equivalent to (n = ring.size, me = ring.index):

        for step in range(n):
            chunk = (me - step - 1) % n                    # the chunk whose sum we extend
            partial = F.linear(x_full[tokens of chunk], weight)   # while the last send and
            if step > 0:                                           # this receive move
                partial += wait for the receive of chunk from prev
            if step < n - 1:
                start: send partial to next; receive chunk (me - step - 2) from prev
        return partial                                     # chunk == me after the last step

    With tiles > 1 each chunk is computed, summed and sent as `tiles` pieces, so the next
    rank can start adding while later pieces are still being computed.
    """
    sizes = check_split(tokens_per_rank, ring)
    dim = _token_dim(x_full, dim)
    if x_full.shape[dim] != sum(sizes):
        raise ValueError(f"linear_reduce_scatter on rank {ring.rank}: expected {sum(sizes)} "
                         f"tokens along dim {dim}, got shape {tuple(x_full.shape)}")
    if ring.size == 1:
        return F.linear(x_full, weight)
    n, me, wire = ring.size, ring.index, wire_dtype or x_full.dtype
    pieces = token_tiles(sizes, tiles)
    piece_shape = with_tokens(x_full, dim, 0)[:-1] + [weight.shape[0]]
    recvs: dict[tuple[int, int], Transfer] = {}
    for step in range(1, n):
        for t, (_, length) in enumerate(pieces[(me - step - 1) % n]):
            if length:
                piece_shape[dim] = length
                buffer = x_full.new_empty(piece_shape, dtype=wire)
                recvs[step, t] = irecv(buffer, ring.prev_rank, ring, (step - 1) * tiles + t,
                                       f"linear_reduce_scatter step {step - 1} tile {t}")
    piece_shape[dim] = sizes[me]
    result = x_full.new_empty(piece_shape)
    my_start = pieces[me][0][0]
    sends = []
    for step in range(n):
        for t, (start, length) in enumerate(pieces[(me - step - 1) % n]):
            if not length:
                continue
            partial = F.linear(x_full.narrow(dim, start, length), weight)
            if step > 0:
                partial += recvs[step, t].wait().to(partial.dtype)
            if step < n - 1:
                sends.append(isend(partial.to(wire).contiguous(), ring.next_rank, ring,
                                   step * tiles + t, f"linear_reduce_scatter step {step} tile {t}"))
            else:
                result.narrow(dim, start - my_start, length).copy_(partial)
    for transfer in sends:
        transfer.wait()
    return result


@timed("project_all_gather")
def project_all_gather(x_local: torch.Tensor, project: Callable[[slice], tuple[torch.Tensor, torch.Tensor]],
                       width: int, tokens_per_rank: Sequence[int], ring: Ring, tiles: int = 1,
                       wire_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Project this rank's tokens tile by tile; keep one output, all-gather the other.

    `project(rows)` maps a slice of this rank's tokens (dim 1 of `x_local`) to `(kept, shared)`,
    both [B, rows, *]: in sequence-parallel attention the queries stay and the keys and values
    (`width` features) travel. Returns (kept for this rank's tokens, shared for every token
    of the ring in order). The plain loop it is equivalent to:

        kept, shared = project(slice(None))
        return kept, all_gather(shared, tokens_per_rank, ring, wire_dtype=wire_dtype)

    Each tile is sent as soon as it is projected, so its ring step hides behind the next
    tile's GEMM. Only the last tile's transfer is exposed, and with more than 2 ranks the
    forwarding of what arrived, which starts after this rank's own tiles (gloo reports a
    receive complete only when waited on, so nothing can be forwarded between GEMMs).
    """
    sizes = check_split(tokens_per_rank, ring)
    if sizes[ring.index] < 1:
        raise ValueError(f"project_all_gather on rank {ring.rank}: every rank needs a token, split {sizes}")
    if x_local.shape[1] != sizes[ring.index]:
        raise ValueError(f"project_all_gather on rank {ring.rank}: expected {sizes[ring.index]} tokens "
                         f"along dim 1, got shape {tuple(x_local.shape)}")
    n, me = ring.size, ring.index
    wire = wire_dtype if wire_dtype and n > 1 else x_local.dtype  # like all_gather: no cast alone
    pieces = token_tiles(sizes, tiles)
    batch = x_local.shape[0]
    recvs: dict[tuple[int, int], Transfer] = {}
    for step in range(1, n):  # post every receive before the first GEMM
        for t, (_, length) in enumerate(pieces[(me - step) % n]):
            if length:
                recvs[step, t] = irecv(x_local.new_empty((batch, length, width), dtype=wire), ring.prev_rank,
                                       ring, (step - 1) * tiles + t, f"project_all_gather step {step - 1} tile {t}")
    sends, out, kept = [], x_local.new_empty((batch, sum(sizes), width)), []
    my_start = pieces[me][0][0]
    for t, (start, length) in enumerate(pieces[me]):
        if not length:
            continue
        kept_rows, shared = project(slice(start - my_start, start - my_start + length))
        kept.append(kept_rows)
        shared = shared.to(wire).contiguous()
        if n > 1:
            sends.append(isend(shared, ring.next_rank, ring, t, f"project_all_gather step 0 tile {t}"))
        out.narrow(1, start, length).copy_(shared)
    for (step, t), transfer in recvs.items():  # in posting order: step by step round the ring
        piece = transfer.wait()
        if step < n - 1:
            sends.append(isend(piece, ring.next_rank, ring, step * tiles + t,
                               f"project_all_gather step {step} tile {t}"))
        start, length = pieces[(me - step) % n][t]
        out.narrow(1, start, length).copy_(piece)
    for transfer in sends:
        transfer.wait()
    return torch.cat(kept, dim=1), out
