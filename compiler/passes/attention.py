"""Recognise attention blocks around each scaled_dot_product_attention.

    x -> q/k/v projections -> [ops with scalars] -> view [B,S,H,D] -> transpose(1,2)
      -> per-head transform (RoPE...) -> [GQA repeat: unsqueeze, expand, reshape] -> sdpa
      -> merge heads -> out projection

A transform may also start before the transpose (GPT-J rotates [B,S,H,D]); a fused projection may
hold q, k, v side by side (GPT-2) or interleaved head by head (GPT-NeoX).

The split-heads and merge-heads reshapes and the GQA repeat are re-emitted by the attention
template for the rank's own heads; the per-head transforms are kept verbatim as Regions.
"""
from __future__ import annotations

import operator
from dataclasses import replace

import torch.fx as fx

from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.ir.graph import AttentionBlock, Projection, Region
from galaxy.compiler.passes.patterns import LAYOUT_OPS, POINTWISE, SDPA, SPLIT_OPS, VIEW_OPS, aten, shape

_TRANSPOSES = {aten.transpose.int, aten.permute.default}


def recognise_attention(sdpa: fx.Node, layer: int, projections: dict[str, Projection],
                        dynamic: set[str]) -> AttentionBlock:
    q_arg, k_arg, v_arg = sdpa.args[:3]
    mask = _arg(sdpa, 3, "attn_mask")
    if _arg(sdpa, 4, "dropout_p", 0.0) not in (0, 0.0):
        raise UntraceableModelError("attention dropout is on; put the model in eval mode", "sdpa", sdpa.name)
    q, q_prepare, q_transform, _, q_seq_major = _heads_path(q_arg, projections, dynamic, sdpa)
    k, k_prepare, k_transform, k_repeat, k_seq_major = _heads_path(k_arg, projections, dynamic, sdpa)
    v, v_prepare, v_transform, v_repeat, v_seq_major = _heads_path(v_arg, projections, dynamic, sdpa)
    if q.input != k.input or q.input != v.input:
        raise UntraceableModelError("q, k and v read different inputs (cross-attention is not supported)",
                                    "sdpa", sdpa.name)
    out = _out_projection(sdpa, projections)
    batch, heads, seq, head_dim = shape(sdpa)
    kv_heads = shape(k_arg)[1] // k_repeat
    if k_repeat != v_repeat:
        raise UntraceableModelError("k and v are repeated differently", "sdpa", sdpa.name)
    return AttentionBlock(
        layer=layer, input=q.input, q=q, k=k, v=v,
        q_transform=q_transform, k_transform=k_transform, v_transform=v_transform,
        sdpa=sdpa.name, mask=mask.name if isinstance(mask, fx.Node) else None,
        is_causal=bool(_arg(sdpa, 5, "is_causal", False)), scale=_arg(sdpa, 6, "scale"),
        heads=heads, kv_heads=kv_heads, head_dim=head_dim, out=out,
        q_prepare=q_prepare, k_prepare=k_prepare, v_prepare=v_prepare,
        seq_major=tuple(kind for kind, flag in zip("qkv", (q_seq_major, k_seq_major, v_seq_major)) if flag),
    )


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _heads_path(arg: fx.Node, projections: dict[str, Projection], dynamic: set[str],
                sdpa: fx.Node) -> tuple[Projection, Region, Region, int, bool]:
    """Walk back from an sdpa operand to its projection. Returns (projection, prepare, transform,
    repeat, seq_major): `prepare` the scalar elementwise ops between the projection and the
    split-heads view; `seq_major` when the transform reads the [B, S, H, D] view and transposes
    itself (its region holds the transpose)."""
    end, repeat = _strip_gqa_repeat(arg)
    split = _find_split_heads(end, dynamic)
    if split is None:
        raise UntraceableModelError("could not find the split-heads view/transpose of an sdpa operand",
                                    str(arg.target), arg.name)
    seq_major = split.target in VIEW_OPS  # the transform starts before the transpose
    view = split if seq_major else split.args[0]
    piece = None if seq_major else _heads_piece(view)
    if piece is not None:
        view = piece[0]
    interleaved = _interleaved_piece(split, end, dynamic) if shape(view)[-1] != shape(sdpa)[-1] else None
    if shape(view)[-1] != shape(sdpa)[-1] and interleaved is None:
        raise UntraceableModelError("a split-heads view is wider than a head, but its heads are not cut "
                                    "into q, k and v along the last dim", str(split.target), split.name)
    prepared = _scalar_ops_back(view.args[0])
    start = prepared[0].args[0] if prepared else view.args[0]
    proj = projections.get(start.name)
    if proj is None:
        raise UntraceableModelError("an sdpa operand does not come from a linear projection (only "
                                    "elementwise ops with scalars may sit between them)", str(start.target),
                                    start.name)
    prepare = Region(tuple(n.name for n in prepared), (start.name,), (prepared[-1].name,) if prepared else ())
    if piece is not None:  # Falcon: the heads of q, k and v one after the other in one projection
        _, first, count = piece
        width = shape(view)[-1]
        item = split.args[0]
        proj = replace(proj, output=item.name, column_offset=first * width, out_features=count * width,
                       nodes=(*proj.nodes, view.name, item.args[0].name, item.name))
    if interleaved is not None:  # GPT-NeoX: [q k v] of each head side by side in one projection
        item, offset, width = interleaved
        proj = replace(proj, output=item.name, column_offset=offset, out_features=shape(view)[2] * width,
                       head_stride=shape(view)[-1], head_width=width,
                       nodes=(*proj.nodes, view.name, split.name, item.args[0].name, item.name))
        split = item
    nodes = _between(split, end, dynamic)
    inputs = _external_inputs(nodes, exclude={split.name})
    transform = Region(tuple(n.name for n in nodes), (split.name, *inputs), (end.name,) if nodes else ())
    return proj, prepare, transform, repeat, seq_major


def _interleaved_piece(split: fx.Node, end: fx.Node, dynamic: set[str]) -> tuple[fx.Node, int, int] | None:
    """After a split-heads transpose of per-head [q k v] columns, the chunk of the last dim on the
    way to `end`: (its getitem, column offset inside a head, width)."""
    for user in split.users:
        if user.target not in (aten.chunk.default, *SPLIT_OPS):
            continue
        dim = user.args[2] if len(user.args) > 2 else user.kwargs.get("dim", 0)
        if dim not in (-1, 3):
            continue
        total = shape(split)[-1]
        if user.target == aten.chunk.default:
            sizes = split_sizes_of(total, -(-total // user.args[1]))
        else:
            sizes = split_sizes_of(total, user.args[1])
        for item in user.users:
            if item.target is operator.getitem and (item is end or item.name in _ancestors(end, dynamic)):
                return item, sum(sizes[:item.args[1]]), sizes[item.args[1]]
    return None


def split_sizes_of(total: int, sizes: int | list[int]) -> list[int]:
    """The piece widths of torch.split(x, sizes) along a dim of `total`."""
    if isinstance(sizes, int):
        return [min(sizes, total - i) for i in range(0, total, sizes)]
    return list(sizes)


def _ancestors(node: fx.Node, dynamic: set[str]) -> set[str]:
    found, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current.name not in found:
            found.add(current.name)
            stack.extend(a for a in current.all_input_nodes if a.name in dynamic)
    return found


def _scalar_ops_back(node: fx.Node) -> list[fx.Node]:
    """The chain of elementwise ops with scalar operands (x * 0.125) ending at `node`, in graph
    order: they act on every column alike, so they commute with splitting the heads."""
    chain = []
    while node.target in POINTWISE and len(node.all_input_nodes) == 1 and len(node.users) == 1:
        chain.append(node)
        node = node.args[0]
    return chain[::-1]


def _strip_gqa_repeat(node: fx.Node) -> tuple[fx.Node, int]:
    """reshape(expand(unsqueeze(x, 2), [B, KV, R, S, D]), [B, KV*R, S, D]) -> (x, R)."""
    if node.target in VIEW_OPS and node.args[0].target == aten.expand.default:
        expand = node.args[0]
        unsq = expand.args[0]
        if unsq.target == aten.unsqueeze.default and unsq.args[1] == 2 and len(shape(expand)) == 5:
            return unsq.args[0], shape(expand)[2]
    return node, 1


def _find_split_heads(end: fx.Node, dynamic: set[str]) -> fx.Node | None:
    """Backward search over dynamic inputs for transpose(view(proj, [B,S,H,D]), 1, 2), else for the
    view alone (GPT-J rotates q and k in [B,S,H,D] and transposes after)."""
    stack, seen, view = [end], set(), None
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        if _is_split_heads(node):
            return node
        if _is_heads_view(node):
            view = node
            continue  # its input is the projection: the search ends here
        stack.extend(a for a in node.all_input_nodes if a.name in dynamic)
    return view


def _is_heads_view(node) -> bool:
    """view(proj, [B, S, H, D]) of a [B, S, H * D] projection."""
    return (isinstance(node, fx.Node) and node.target in VIEW_OPS and len(shape(node) or ()) == 4
            and len(shape(node.args[0]) or ()) == 3)


def _is_split_heads(node: fx.Node) -> bool:
    if node.target not in _TRANSPOSES:
        return False
    dims = node.args[1:] if node.target == aten.transpose.int else tuple(node.args[1])
    swaps_1_2 = sorted(dims) == [1, 2] if len(dims) == 2 else list(dims) == [0, 2, 1, 3]
    return swaps_1_2 and (_is_heads_view(node.args[0]) or _heads_piece(node.args[0]) is not None)


def _heads_piece(node: fx.Node) -> tuple[fx.Node, int, int] | None:
    """getitem(split(view(proj, [B, S, H, D]), sizes, dim=2), i): a fused projection cut by heads
    (Falcon: q heads, then the k head, then the v head). Returns (view, first head, heads)."""
    if node.target is not operator.getitem or node.args[0].target not in SPLIT_OPS:
        return None
    split = node.args[0]
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if dim not in (2, -2) or not _is_heads_view(split.args[0]):
        return None
    sizes = split_sizes_of(shape(split.args[0])[2], split.args[1])
    return split.args[0], sum(sizes[:node.args[1]]), sizes[node.args[1]]


def _between(start: fx.Node, end: fx.Node, dynamic: set[str]) -> list[fx.Node]:
    """Dynamic nodes on paths from start (exclusive) to end (inclusive), in graph order."""
    if start is end:
        return []
    ancestors, stack = set(), [end]
    while stack:
        node = stack.pop()
        if node.name in ancestors or node is start:
            continue
        ancestors.add(node.name)
        stack.extend(a for a in node.all_input_nodes if a.name in dynamic)
    return [n for n in start.graph.nodes if n.name in ancestors]


def _external_inputs(nodes: list[fx.Node], exclude: set[str]) -> list[str]:
    inside = {n.name for n in nodes} | exclude
    found: list[str] = []
    for node in nodes:
        for arg in node.all_input_nodes:
            if arg.name not in inside and arg.name not in found:
                found.append(arg.name)
    return found


def _out_projection(sdpa: fx.Node, projections: dict[str, Projection]) -> Projection:
    """Follow the merge-heads layout ops from sdpa to the projection that consumes them."""
    by_input = {p.input: p for p in projections.values()}
    node = sdpa
    for _ in range(8):
        users = list(node.users)
        if len(users) != 1 or users[0].target not in LAYOUT_OPS:
            break
        node = users[0]
        if node.name in by_input:
            return by_input[node.name]
    raise UntraceableModelError("attention output does not reach an output projection through "
                                "reshape/transpose only", str(node.target), node.name)


__all__ = ["recognise_attention", "SDPA"]
