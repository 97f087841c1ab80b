"""Find linear-like ops: aten.linear, GPT-2's Conv1D (view -> addmm -> view) and x @ W.T (Falcon).

A projection whose output is split along the last dim (GPT-2's fused q/k/v) yields one
`Projection` per piece, each with its column range inside the fused weight.
"""
from __future__ import annotations

import operator

import torch.fx as fx

from galaxy.compiler.ir.graph import Projection
from galaxy.compiler.passes.patterns import SPLIT_OPS, VIEW_OPS, aten, shape


def find_projections(gm: fx.GraphModule, weights: set[str]) -> dict[str, Projection]:
    """Map output node name -> Projection for every linear-like op on a weight placeholder."""
    found: dict[str, Projection] = {}
    for node in gm.graph.nodes:
        proj = _match_linear(node, weights) or _match_addmm(node, weights) or _match_matmul(node, weights)
        if proj is None:
            continue
        pieces = _split_pieces(gm, proj)
        for piece in pieces or [proj]:
            found[piece.output] = piece
    return found


def _name(node) -> str | None:
    return node.name if isinstance(node, fx.Node) else None


def _match_linear(node: fx.Node, weights: set[str]) -> Projection | None:
    if node.target != aten.linear.default or _name(node.args[1]) not in weights:
        return None
    x, w = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    out_f, in_f = shape(w)
    return Projection(node.name, x.name, w.name, _name(bias), False, in_f, out_f, 0, (node.name,))


_TRANSPOSED = {aten.numpy_T.default, aten.t.default}


def _match_matmul(node: fx.Node, weights: set[str]) -> Projection | None:
    """x @ W.T (Falcon's linear without bias): matmul(x, t(W)) with W stored [out, in]."""
    if node.target != aten.matmul.default or not isinstance(node.args[1], fx.Node):
        return None
    x, wt = node.args[0], node.args[1]
    if wt.target not in _TRANSPOSED or _name(wt.args[0]) not in weights or len(shape(wt) or ()) != 2:
        return None
    out_f, in_f = shape(wt.args[0])
    return Projection(node.name, x.name, wt.args[0].name, None, False, in_f, out_f, 0, (node.name, wt.name))


def _match_addmm(node: fx.Node, weights: set[str]) -> Projection | None:
    """Conv1D: out = view(addmm(bias, view(x, [-1, in]), W[in, out]), [..., out])."""
    if node.target != aten.addmm.default or _name(node.args[2]) not in weights:
        return None
    bias, flat_x, w = node.args[0], node.args[1], node.args[2]
    users = list(node.users)
    if flat_x.target not in VIEW_OPS or len(users) != 1 or users[0].target not in VIEW_OPS:
        return None
    x, out = flat_x.args[0], users[0]
    if len(shape(x) or ()) != 3 or len(shape(out) or ()) != 3:
        return None
    in_f, out_f = shape(w)
    return Projection(out.name, x.name, w.name, _name(bias), True, in_f, out_f, 0,
                      (flat_x.name, node.name, out.name))


def _split_pieces(gm: fx.GraphModule, proj: Projection) -> list[Projection]:
    out = next(n for n in gm.graph.nodes if n.name == proj.output)
    users = list(out.users)
    if len(users) != 1 or users[0].target not in SPLIT_OPS:
        return []
    split = users[0]
    dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
    if dim not in (-1, 2):
        return []
    sizes = split.args[1]
    if isinstance(sizes, int):
        sizes = [sizes] * (proj.out_features // sizes)
    offsets = [sum(sizes[:i]) for i in range(len(sizes))]
    pieces = []
    for item in split.users:
        if item.target is not operator.getitem:
            return []
        i = item.args[1]
        pieces.append(Projection(item.name, proj.input, proj.weight, proj.bias, proj.weight_is_in_out,
                                 proj.in_features, sizes[i], offsets[i],
                                 (*proj.nodes, split.name, item.name)))
    return sorted(pieces, key=lambda p: p.column_offset)
