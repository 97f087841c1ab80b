"""Small graph-pattern vocabulary shared by the recognition passes.

Everything here looks at aten targets and shapes in `node.meta["val"]`, never at module or
attribute names.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx

aten = torch.ops.aten

VIEW_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default}
LAYOUT_OPS = VIEW_OPS | {aten.transpose.int, aten.permute.default, aten.contiguous.default,
                         aten.clone.default, aten.alias.default}
SPLIT_OPS = {aten.split.Tensor, aten.split_with_sizes.default}
# Ops that see one position of the last dimension at a time (or reduce over it only): safe to
# run on any subset of tokens (connective blocks) or of columns (MLP activation, see below).
POINTWISE = {
    aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.mul.Tensor,
    aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor,
    aten.rsqrt.default, aten.sqrt.default, aten.neg.default, aten.tanh.default, aten.gelu.default,
    aten.silu.default, aten.relu.default, aten.sigmoid.default, aten.exp.default, aten.erf.default,
    aten.reciprocal.default, aten.abs.default, aten.clamp.default, aten.where.self,
    aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default, aten.type_as.default,
    aten.dropout.default, aten.alias.default, aten.clone.default, aten.contiguous.default,
    aten.detach.default,
}
LAST_DIM_REDUCTIONS = {aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.var.correction}
NORMS = {aten.layer_norm.default, aten.native_layer_norm.default, aten.rms_norm.default}
IGNORED = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}
SDPA = aten.scaled_dot_product_attention.default


def shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def tensor_inputs(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes]


def flattens_tokens(node: fx.Node) -> bool:
    """A view between [batch, seq, hidden] and [batch * seq, hidden] (OPT runs its MLP on the
    flattened rows): it moves no value across tokens, and generated code leaves it out."""
    if node.target not in VIEW_OPS or not isinstance(node.args[0], fx.Node):
        return False
    a, b = shape(node.args[0]), shape(node)
    if a is None or b is None or sorted((len(a), len(b))) != [2, 3] or a[-1] != b[-1]:
        return False
    three, two = (a, b) if len(a) == 3 else (b, a)
    return three[0] * three[1] == two[0]


def is_token_local(node: fx.Node, n_dims_hint: int | None = None) -> bool:
    """True when the op never mixes positions of the sequence (dim 1)."""
    if node.target in POINTWISE or node.target in NORMS or node.target in IGNORED or flattens_tokens(node):
        return True
    if node.target in LAST_DIM_REDUCTIONS:
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        rank = len(shape(node.args[0]) or ())
        return dims is not None and all(d in (-1, rank - 1) for d in dims)
    return node.target is operator.getitem


def is_column_local(node: fx.Node) -> bool:
    """True for elementwise ops, which are safe on any subset of MLP columns."""
    return node.target in POINTWISE or node.target in IGNORED


def is_placeholder(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "placeholder"
