"""Direct (pairwise) uneven collectives along the token dimension, plain and fused with a GEMM.

A ring moves a collective in n - 1 steps; every step waits for its largest chunk, and from the
second step on a rank can only forward what it has received, so a rank that is slow or
throttled (a CPU quota) holds up every step. Here each rank sends its chunk (all-gather), or
each peer's partial slice (reduce-scatter), straight to every peer: every send and receive is
posted up front, nothing is forwarded, and the kernel moves all of it while the rank computes.
On a switched LAN a device sends the same bytes as in a ring when the split is even.

Receives are taken in a fixed order, smallest chunk first (it should land first when all
start together; gloo reports a receive complete only once it is waited on, so arrival
cannot be polled). A chunk of 0 tokens is never sent; both sides know the split. Every wait
has the ring's timeout and names the peer (p2p.py). Results never alias inputs, except that
a ring of size 1 returns like the ring collectives do (a copy for the plain ones, the GEMM's
own output for the fused ones). `wire_dtype` casts what travels; all-gathers round the local
piece too, so every rank sees the same gathered tensor.

The slow twins are collectives.all_gather_naive / reduce_scatter_naive, and for the fused
ones F.linear composed with them.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .collectives import check_split, with_tokens
from .overlap import _token_dim, linear_into
from .p2p import Transfer, irecv, isend
from .ring import Ring
from .splits import offsets
from .timing import timed

_TAG = 0  # one message per pair and direction in a collective, and every rank waits for all


def arrival_order(sizes: Sequence[int], me: int) -> list[int]:
    """Ring positions of the peers with tokens, in the order their chunks are waited for:
    smallest first, then nearest after `me` round the ring."""
    return sorted((p for p in _peers(len(sizes), me) if sizes[p]), key=lambda p: sizes[p])


def _start_all_gather(x_local: torch.Tensor, sizes: Sequence[int], dim: int, wire: torch.dtype, ring: Ring,
                      what: str) -> tuple[dict[int, Transfer], torch.Tensor, list[Transfer]]:
    """Post a receive from every peer with tokens, then send this rank's chunk (rounded to the
    wire dtype) to every peer. Returns (receives by ring position, the chunk as sent, sends)."""
    recvs = {src: irecv(x_local.new_empty(with_tokens(x_local, dim, sizes[src]), dtype=wire), ring.rank_at(src),
                        ring, _TAG, f"{what} from ring position {src}")
             for src in arrival_order(sizes, ring.index)}
    own = x_local.to(wire).contiguous()
    sends = [isend(own, ring.rank_at(dst), ring, _TAG, f"{what} to ring position {dst}")
             for dst in range(ring.size) if dst != ring.index] if sizes[ring.index] else []
    return recvs, own, sends


def _wait_all(transfers: Sequence[Transfer]) -> None:
    for transfer in transfers:
        transfer.wait()


def _check_local(x: torch.Tensor, dim: int, tokens: int, what: str, ring: Ring) -> None:
    if x.shape[dim] != tokens:
        raise ValueError(f"{what} on rank {ring.rank}: expected {tokens} tokens along dim {dim}, "
                         f"got shape {tuple(x.shape)}")


@timed("all_gather_direct")
def all_gather_direct(x_local: torch.Tensor, tokens_per_rank: Sequence[int], ring: Ring, dim: int = 1,
                      wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Concatenate every rank's tokens along `dim`, in ring order: `all_gather` without a ring.

    This rank's chunk goes to every peer at once and every peer's chunk is received into its
    own buffer, then copied into place (smallest first)."""
    sizes = check_split(tokens_per_rank, ring)
    me = ring.index
    _check_local(x_local, dim, sizes[me], "all_gather_direct", ring)
    if ring.size == 1:
        return x_local.clone()
    starts = offsets(sizes)
    recvs, own, sends = _start_all_gather(x_local, sizes, dim, wire_dtype or x_local.dtype, ring, "all_gather_direct")
    out = x_local.new_empty(with_tokens(x_local, dim, sum(sizes)))
    out.narrow(dim, starts[me], sizes[me]).copy_(own)
    for src, transfer in recvs.items():
        out.narrow(dim, starts[src], sizes[src]).copy_(transfer.wait())
    _wait_all(sends)
    return out


@timed("reduce_scatter_direct")
def reduce_scatter_direct(x_partial: torch.Tensor, tokens_per_rank: Sequence[int], ring: Ring, dim: int = 1,
                          wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum the ranks' full-length partial tensors; each rank keeps its own tokens: `reduce_scatter`
    without a ring. Each peer's slice of this rank's partial goes straight to it, and this rank
    adds the slices it receives for its own tokens (from the nearest peer after it on)."""
    sizes = check_split(tokens_per_rank, ring)
    me = ring.index
    _check_local(x_partial, dim, sum(sizes), "reduce_scatter_direct", ring)
    if ring.size == 1:
        return x_partial.clone()
    wire = wire_dtype or x_partial.dtype
    starts = offsets(sizes)
    recvs = _receive_own_tokens(x_partial, with_tokens(x_partial, dim, sizes[me]), sizes, wire, ring,
                                "reduce_scatter_direct")
    sends = [isend(x_partial.narrow(dim, starts[dst], sizes[dst]).to(wire).contiguous(), ring.rank_at(dst),
                   ring, _TAG, f"reduce_scatter_direct to ring position {dst}")
             for dst in _largest_first(sizes, me)]
    total = x_partial.narrow(dim, starts[me], sizes[me]).clone()
    for transfer in recvs.values():
        total += transfer.wait().to(total.dtype)
    _wait_all(sends)
    return total


def _receive_own_tokens(like: torch.Tensor, shape: Sequence[int], sizes: Sequence[int], wire: torch.dtype,
                        ring: Ring, what: str) -> dict[int, Transfer]:
    """A receive from every peer of its partial sums of this rank's tokens (none if it has none)."""
    senders = _peers(ring.size, ring.index) if sizes[ring.index] else []
    return {src: irecv(like.new_empty(shape, dtype=wire), ring.rank_at(src), ring, _TAG, f"{what} from ring position {src}")
            for src in senders}


def _peers(n: int, me: int) -> list[int]:
    """Ring positions other than `me`, nearest after it first."""
    return [(me + k) % n for k in range(1, n)]


def _largest_first(sizes: Sequence[int], me: int) -> list[int]:
    """Peers with tokens, largest chunk first (its transfer takes longest), then nearest after me."""
    return sorted((p for p in _peers(len(sizes), me) if sizes[p]), key=lambda p: -sizes[p])


@timed("all_gather_linear_direct")
def all_gather_linear_direct(x_local: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                             tokens_per_rank: Sequence[int], ring: Ring, dim: int = 1,
                             wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`F.linear(all_gather_direct(x_local, ..., wire_dtype), weight, bias)`, each peer's rows
    computed as soon as they are in. The plain loop it is equivalent to:

        post a receive from every peer; send this rank's chunk to every peer
        out[own tokens] = F.linear(own chunk, weight, bias)     # while the chunks move
        for each peer, smallest chunk first:
            out[its tokens] = F.linear(wait for its chunk, weight, bias)
    """
    sizes = check_split(tokens_per_rank, ring)
    me, dim = ring.index, _token_dim(x_local, dim)
    _check_local(x_local, dim, sizes[me], "all_gather_linear_direct", ring)
    if ring.size == 1:
        return F.linear(x_local, weight, bias)
    starts = offsets(sizes)
    recvs, own, sends = _start_all_gather(x_local, sizes, dim, wire_dtype or x_local.dtype, ring,
                                          "all_gather_linear_direct")
    out = x_local.new_empty(with_tokens(x_local, dim, sum(sizes))[:-1] + [weight.shape[0]])
    if sizes[me]:
        linear_into(out.narrow(dim, starts[me], sizes[me]), own.to(x_local.dtype), weight, bias)
    for src, transfer in recvs.items():
        piece = transfer.wait().to(x_local.dtype)
        linear_into(out.narrow(dim, starts[src], sizes[src]), piece, weight, bias)
    _wait_all(sends)
    return out


@timed("linear_reduce_scatter_direct")
def linear_reduce_scatter_direct(x_full: torch.Tensor, weight: torch.Tensor, tokens_per_rank: Sequence[int],
                                 ring: Ring, dim: int = 1,
                                 wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """`reduce_scatter_direct(F.linear(x_full, weight), ..., wire_dtype)`, one GEMM per destination
    chunk, each sent as soon as it is computed. No bias: add it once after the sum. The plain
    loop it is equivalent to:

        post a receive of this rank's tokens from every peer
        for each peer, largest chunk first:
            send F.linear(x_full[its tokens], weight) to it       # moves during the next GEMM
        total = F.linear(x_full[own tokens], weight)
        for each peer: total += wait for its partial of our tokens
    """
    sizes = check_split(tokens_per_rank, ring)
    me, dim = ring.index, _token_dim(x_full, dim)
    _check_local(x_full, dim, sum(sizes), "linear_reduce_scatter_direct", ring)
    if ring.size == 1:
        return F.linear(x_full, weight)
    wire = wire_dtype or x_full.dtype
    starts = offsets(sizes)
    own_shape = with_tokens(x_full, dim, sizes[me])[:-1] + [weight.shape[0]]
    recvs = _receive_own_tokens(x_full, own_shape, sizes, wire, ring, "linear_reduce_scatter_direct")
    sends = []
    for dst in _largest_first(sizes, me):
        partial = F.linear(x_full.narrow(dim, starts[dst], sizes[dst]), weight)
        sends.append(isend(partial.to(wire).contiguous(), ring.rank_at(dst), ring, _TAG,
                           f"linear_reduce_scatter_direct to ring position {dst}"))
    total = F.linear(x_full.narrow(dim, starts[me], sizes[me]), weight)
    for transfer in recvs.values():
        total += transfer.wait().to(total.dtype)
    _wait_all(sends)
    return total
