"""Uneven collectives along the token dimension, built from rings of async isend/irecv.

gloo's all_gather_into_tensor / reduce_scatter_tensor only split evenly; rings of
isend/irecv measured 1.3-1.8x faster than padding to them (DESIGN.md). `tokens_per_rank`
is aligned with `ring.ranks`; any entry may be 0. A chunk of 0 tokens is never sent: both
sides know the split, so both skip it. Every wait gives up after `ring.timeout_s` with a
`CollectiveTimeout` naming the peer (see p2p.py). A ring of size 1 returns a copy of its
input (no communication, no wire cast). Results never alias inputs, so callers may modify
them in place.

`wire_dtype` (e.g. torch.float16) casts what travels, never the result's dtype. For
all_gather and gather_hidden the local piece is rounded through `wire_dtype` too, so every
rank sees the same gathered tensor.

Each ring function has a slow, obviously correct twin (`*_naive`) that tests compare with.
"""
from __future__ import annotations

import json
from typing import Mapping, Sequence

import torch
import torch.distributed as dist

from . import linkdelay
from .p2p import Transfer, irecv, isend, recv, send
from .ring import Ring
from .splits import offsets
from .timing import timed


def check_split(tokens_per_rank: Sequence[int], ring: Ring) -> list[int]:
    """The split as a list of ints; ValueError unless it has one entry >= 0 per ring rank."""
    sizes = [int(t) for t in tokens_per_rank]
    if len(sizes) != ring.size or min(sizes) < 0:
        raise ValueError(f"tokens_per_rank {sizes} needs {ring.size} entries >= 0, one per rank "
                         f"of ring {list(ring.ranks)}")
    return sizes


def with_tokens(x: torch.Tensor, dim: int, tokens: int) -> list[int]:
    """Shape of `x` with `tokens` along `dim`."""
    shape = list(x.shape)
    shape[dim] = tokens
    return shape


def _expect(x: torch.Tensor, dim: int, tokens: int, what: str, ring: Ring) -> None:
    if x.shape[dim] != tokens:
        raise ValueError(f"{what} on rank {ring.rank}: expected {tokens} tokens along dim {dim}, "
                         f"got shape {tuple(x.shape)}")


def _post_ring_receives(like: torch.Tensor, dim: int, sizes: list[int], wire: torch.dtype, ring: Ring,
                        chunk_at_step, what: str) -> dict[int, Transfer]:
    """Post every ring step's receive up front (from the previous rank), skipping empty chunks."""
    recvs: dict[int, Transfer] = {}
    for step in range(ring.size - 1):
        chunk = chunk_at_step(step)
        if sizes[chunk]:
            buffer = like.new_empty(with_tokens(like, dim, sizes[chunk]), dtype=wire)
            recvs[step] = irecv(buffer, ring.prev_rank, ring, step, f"{what} step {step}")
    return recvs


@timed("all_gather")
def all_gather(x_local: torch.Tensor, tokens_per_rank: Sequence[int], ring: Ring, dim: int = 1,
               wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Concatenate every rank's tokens along `dim`, in ring order.

    Ring of n-1 steps: at step s this rank forwards chunk (index - s) to the next rank and
    receives chunk (index - s - 1) from the previous one. All receives are posted up front.
    """
    sizes = check_split(tokens_per_rank, ring)
    _expect(x_local, dim, sizes[ring.index], "all_gather", ring)
    if ring.size == 1:
        return x_local.clone()
    n, me, wire = ring.size, ring.index, wire_dtype or x_local.dtype
    starts = offsets(sizes)
    out = x_local.new_empty(with_tokens(x_local, dim, sum(sizes)))
    recvs = _post_ring_receives(x_local, dim, sizes, wire, ring, lambda step: (me - step - 1) % n,
                                "all_gather")
    in_hand = x_local.to(wire).contiguous()
    out.narrow(dim, starts[me], sizes[me]).copy_(in_hand)
    sends = []
    for step in range(n - 1):
        chunk = (me - step) % n
        if step > 0 and sizes[chunk]:
            in_hand = recvs[step - 1].wait()
            out.narrow(dim, starts[chunk], sizes[chunk]).copy_(in_hand)
        if sizes[chunk]:
            sends.append(isend(in_hand, ring.next_rank, ring, step, f"all_gather step {step}"))
    last = (me + 1) % n  # received in the final step, never forwarded
    if sizes[last]:
        out.narrow(dim, starts[last], sizes[last]).copy_(recvs[n - 2].wait())
    for transfer in sends:
        transfer.wait()
    return out


@timed("reduce_scatter")
def reduce_scatter(x_partial: torch.Tensor, tokens_per_rank: Sequence[int], ring: Ring,
                   dim: int = 1, wire_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Sum the ranks' full-length partial tensors; each rank keeps its own tokens.

    Ring of n-1 steps: at step s this rank sends its running sum of chunk (index - s - 1)
    to the next rank, receives the previous rank's running sum of chunk (index - s - 2)
    and adds its own partial of that chunk. After the last step it holds chunk `index`.
    """
    sizes = check_split(tokens_per_rank, ring)
    _expect(x_partial, dim, sum(sizes), "reduce_scatter", ring)
    if ring.size == 1:
        return x_partial.clone()
    n, me, wire = ring.size, ring.index, wire_dtype or x_partial.dtype
    starts = offsets(sizes)

    def own(chunk: int) -> torch.Tensor:
        return x_partial.narrow(dim, starts[chunk], sizes[chunk])

    recvs = _post_ring_receives(x_partial, dim, sizes, wire, ring, lambda step: (me - step - 2) % n,
                                "reduce_scatter")
    sends = []
    for step in range(n - 1):
        chunk = (me - step - 1) % n
        if not sizes[chunk]:
            continue
        running = own(chunk) if step == 0 else recvs[step - 1].wait().to(x_partial.dtype) + own(chunk)
        sends.append(isend(running.to(wire).contiguous(), ring.next_rank, ring, step,
                           f"reduce_scatter step {step}"))
    result = own(me).clone() if not sizes[me] else recvs[n - 2].wait().to(x_partial.dtype) + own(me)
    for transfer in sends:
        transfer.wait()
    return result


@timed("scatter_hidden")
def scatter_hidden(tensors: Sequence[torch.Tensor] | None, tokens_per_rank: Sequence[int], ring: Ring,
                   shapes: Sequence[Sequence[int]], src: int = 0, dim: int = 1,
                   dtype: torch.dtype = torch.float32, wire_dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """Each rank's own tokens of every tensor ring position `src` holds whole (the layer inputs, on
    rank 0 only: the others pass None). Every send and receive is posted at once; what travels
    is cast to `wire_dtype` and back, and the source rounds its own tokens the same way."""
    sizes = check_split(tokens_per_rank, ring)
    starts = offsets(sizes)
    me, root = ring.index, ring.rank_at(src)
    if me == src:
        if tensors is None or len(tensors) != len(shapes):
            raise ValueError(f"scatter_hidden on the source rank needs {len(shapes)} tensors")
        wired = [t.to(wire_dtype or t.dtype) for t in tensors]
        sends = [isend(t.narrow(dim, starts[dst], sizes[dst]).contiguous(), ring.rank_at(dst), ring, i,
                       f"scatter of the layer inputs [{i}]")
                 for i, t in enumerate(wired) for dst in range(ring.size) if dst != me and sizes[dst]]
        for transfer in sends:
            transfer.wait()
        return [t.narrow(dim, starts[me], sizes[me]).to(dtype, copy=True) for t in wired]
    outs = [torch.empty(with_tokens(torch.empty(shape, device="meta"), dim, sizes[me]), dtype=wire_dtype or dtype)
            for shape in shapes]
    pending = [irecv(out, root, ring, i, f"scatter of the layer inputs from {ring.describe(root)} [{i}]")
               for i, out in enumerate(outs) if sizes[me]]
    for transfer in pending:
        transfer.wait()
    return [out.to(dtype) for out in outs]


@timed("gather_hidden")
def gather_hidden(tensors: Sequence[torch.Tensor], tokens_per_rank: Sequence[int], ring: Ring, dst: int = 0,
                  dim: int = 1, wire_dtype: torch.dtype | None = None) -> list[torch.Tensor | None]:
    """Every tensor whole on ring position `dst` (each rank sends its tokens straight to it, all at
    once); the other ranks get None for each."""
    sizes = check_split(tokens_per_rank, ring)
    for t in tensors:
        _expect(t, dim, sizes[ring.index], "gather_hidden", ring)
    if not 0 <= dst < ring.size:
        raise ValueError(f"gather_hidden: dst {dst} is not a ring position 0..{ring.size - 1}")
    if ring.size == 1:
        return [t.clone() for t in tensors]
    me, root = ring.index, ring.rank_at(dst)
    if me != dst:
        sends = [isend(t.to(wire_dtype or t.dtype).contiguous(), root, ring, i, f"gather of the head inputs [{i}]")
                 for i, t in enumerate(tensors) if sizes[me]]
        for transfer in sends:
            transfer.wait()
        return [None] * len(tensors)
    starts = offsets(sizes)
    outs = [t.new_empty(with_tokens(t, dim, sum(sizes))) for t in tensors]
    recvs = [(i, src, irecv(t.new_empty(with_tokens(t, dim, sizes[src]), dtype=wire_dtype or t.dtype),
                            ring.rank_at(src), ring, i, f"gather of the head inputs [{i}]"))
             for i, t in enumerate(tensors) for src in range(ring.size) if src != me and sizes[src]]
    for i, t in enumerate(tensors):
        outs[i].narrow(dim, starts[me], sizes[me]).copy_(t.to(wire_dtype or t.dtype))
    for i, src, transfer in recvs:
        outs[i].narrow(dim, starts[src], sizes[src]).copy_(transfer.wait())
    return outs


def broadcast_tensors(tensors: Mapping[str, torch.Tensor] | None, ring: Ring,
                      src: int = 0) -> dict[str, torch.Tensor]:
    """Named tensors of ring position `src` on every rank (direct sends from it).

    First a JSON header {name: [shape, dtype]} (its length, then its bytes), then each
    tensor's bytes; any dtype travels as raw bytes. Other ranks pass None.
    """
    root = ring.rank_at(src)
    what = f"broadcast of the inputs from {ring.describe(root)}"
    if ring.rank == root:
        if tensors is None:
            raise ValueError("broadcast_tensors: the source rank must pass its tensors")
        tensors = {name: value.contiguous() for name, value in tensors.items()}
        header = json.dumps({name: [list(value.shape), str(value.dtype).removeprefix("torch.")]
                             for name, value in tensors.items()}).encode()
        blobs = [torch.tensor([len(header)], dtype=torch.int64),
                 torch.frombuffer(bytearray(header), dtype=torch.uint8)]
        blobs += [value.reshape(-1).view(torch.uint8) for value in tensors.values()]
        for peer in ring.ranks:
            if peer != root:
                for tag, blob in enumerate(blobs):
                    if blob.numel():
                        send(blob, peer, ring, what, tag)
        return dict(tensors)
    length = recv(torch.zeros(1, dtype=torch.int64), root, ring, what, 0)
    header = recv(torch.empty(int(length.item()), dtype=torch.uint8), root, ring, what, 1)
    result = {}
    for tag, (name, (shape, dtype_name)) in enumerate(json.loads(bytes(header.tolist())).items(), 2):
        value = torch.empty(shape, dtype=getattr(torch, dtype_name))
        raw = value.reshape(-1).view(torch.uint8)
        if raw.numel():
            recv(raw, root, ring, what, tag)
        result[name] = value
    return result


# --- slow, obviously correct twins (tests only) -----------------------------------------------

def all_gather_naive(x_local: torch.Tensor, tokens_per_rank: Sequence[int], ring: Ring,
                     dim: int = 1) -> torch.Tensor:
    """Every rank sends its whole piece to every other rank, one sender at a time."""
    sizes = check_split(tokens_per_rank, ring)
    pieces = []
    for src in range(ring.size):
        if src == ring.index:
            piece = x_local.contiguous()
            for peer in ring.ranks:
                if peer != ring.rank and sizes[src]:
                    send(piece, peer, ring, "all_gather_naive")
        else:
            piece = x_local.new_empty(with_tokens(x_local, dim, sizes[src]))
            if sizes[src]:
                recv(piece, ring.rank_at(src), ring, "all_gather_naive")
        pieces.append(piece)
    return torch.cat(pieces, dim)


def reduce_scatter_naive(x_partial: torch.Tensor, tokens_per_rank: Sequence[int], ring: Ring,
                         dim: int = 1) -> torch.Tensor:
    """Every rank sends each other rank that rank's slice; each sums the slices in ring order."""
    sizes = check_split(tokens_per_rank, ring)
    starts = offsets(sizes)
    me = ring.index
    contributions = []
    for src in range(ring.size):
        if src == me:
            for dst in range(ring.size):
                if dst != me and sizes[dst]:
                    send(x_partial.narrow(dim, starts[dst], sizes[dst]), ring.rank_at(dst), ring,
                         "reduce_scatter_naive")
            contributions.append(x_partial.narrow(dim, starts[me], sizes[me]))
        else:
            piece = x_partial.new_empty(with_tokens(x_partial, dim, sizes[me]))
            if sizes[me]:
                recv(piece, ring.rank_at(src), ring, "reduce_scatter_naive")
            contributions.append(piece)
    total = contributions[0].clone()
    for piece in contributions[1:]:
        total += piece
    return total


@timed("all_reduce")
def all_reduce(x: torch.Tensor, ring: Ring, wire_dtype: torch.dtype | None = None,
               algorithm: str = "ring") -> torch.Tensor:
    """Sum `x` over the ring's ranks (Megatron-style stages, whose connective blocks are replicated,
    and decode steps). A ring algorithm over every rank is gloo's own all-reduce, reducing in place
    (x is a GEMM's fresh output, so copying it would only cost time); with `wire_dtype` the sum
    travels and accumulates in that dtype. A ring of some ranks, the star and direct algorithms,
    and any all-reduce under emulated link latency run over p2p (runtime/reduce.py)."""
    out = x.contiguous()
    if ring.size == 1:
        return out
    if algorithm != "ring" or ring.size != dist.get_world_size() or linkdelay.active():
        from .reduce import all_reduce_p2p  # reduce.py builds on this module
        return all_reduce_p2p(out, ring, algorithm, wire_dtype)
    wire = out if wire_dtype is None else out.to(wire_dtype)
    work = dist.all_reduce(wire, async_op=True)
    return Transfer(work, wire, ring.next_rank, "all-reduce with", "all_reduce", ring).wait().to(x.dtype)
