"""Print one aten op as the torch code a person writes: operators, methods, `F.*`, indexing.

`expression(node, args, kwargs)` takes the node's arguments already printed (`Expr` for values,
Python values for the rest) and returns an `Expr`: its text and how tightly it binds, so an
operand is put in parentheses only where Python needs them. Ops without a readable form fall
back to `aten.<op>.<overload>(...)` (the module then binds `aten = torch.ops.aten`).

Arguments that only repeat a default are left out (`device=cpu`, `pin_memory=False`, a slice's
start 0 and an end past the dimension, which becomes `x[..., 8:]` instead of 2**63 - 1).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.fx as fx

aten = torch.ops.aten

# How tightly an expression binds (Python's precedence, higher binds tighter).
ATOM, POWER, UNARY, PRODUCT, SUM, BIT_AND, BIT_XOR, BIT_OR, COMPARISON = 100, 90, 80, 70, 60, 50, 45, 40, 30
SLICE_END_MAX = 2 ** 62  # a slice end this large means "to the end"


@dataclass(frozen=True)
class Expr:
    text: str
    binds: int = ATOM

    def at(self, binds: int) -> str:
        """The text, in parentheses unless it binds at least as tightly as `binds`."""
        return self.text if self.binds >= binds else f"({self.text})"


def literal(value: Any) -> str:
    """A constant argument as Python source."""
    if isinstance(value, Expr):
        return value.text
    if isinstance(value, (list, tuple)):
        inner = ", ".join(literal(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' if len(value) == 1 else ''})"
    if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
        return str(value)
    if isinstance(value, torch.device):
        return f"torch.device({str(value)!r})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, (bool, int, float, str)) or value is None:
        return repr(value)
    raise TypeError(f"cannot print argument {value!r} of type {type(value).__name__}")


def _operand(value: Any) -> Expr:
    """A value or a Python number as an operand of an operator."""
    if isinstance(value, Expr):
        return value
    text = literal(value)
    return Expr(text, UNARY if text.startswith("-") else ATOM)


def _binary(symbol: str, binds: int, right_binds: int | None = None):
    def write(a, b, **_) -> Expr:
        return Expr(f"{_operand(a).at(binds)} {symbol} {_operand(b).at(right_binds or binds + 1)}", binds)
    return write


def _unary(symbol: str):
    return lambda a, **_: Expr(f"{symbol}{_operand(a).at(UNARY)}", UNARY)


def _call(function: str, keywords: tuple[str, ...] = ()):
    """`function(a, b, key=value)`: positional arguments, then the named keywords when given."""
    def write(*args, **kwargs) -> Expr:
        parts = [literal(a) for a in args]
        parts += [f"{k}={literal(v)}" for k, v in kwargs.items() if k in keywords or not keywords]
        return Expr(f"{function}({', '.join(parts)})")
    return write


def _method(name: str, spread: bool = False):
    """`x.name(args)`; `spread` writes a shape list as separate arguments (`x.view(1, -1, 8)`)."""
    def write(x, *args, **kwargs) -> Expr:
        if spread and len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])
        parts = [literal(a) for a in args] + [f"{k}={literal(v)}" for k, v in kwargs.items()]
        return Expr(f"{_operand(x).at(ATOM)}.{name}({', '.join(parts)})")
    return write


def _add(a, b, alpha=1, **_) -> Expr:
    return _binary("+", SUM)(a, b if alpha == 1 else _binary("*", PRODUCT)(alpha, b))


def _sub(a, b, alpha=1, **_) -> Expr:
    return _binary("-", SUM)(a, b if alpha == 1 else _binary("*", PRODUCT)(alpha, b))


def _pow(a, b, **_) -> Expr:
    return Expr(f"{_operand(a).at(ATOM)} ** {_operand(b).at(UNARY)}", POWER)


def _div(a, b, rounding_mode=None, **_) -> Expr:
    if rounding_mode is None:
        return _binary("/", PRODUCT)(a, b)
    return _call("torch.div")(a, b, rounding_mode=rounding_mode)


def _to(x, *args, dtype=None, **_) -> Expr:
    """aten.to.* and _to_copy keep only the dtype (generated modules run on the CPU)."""
    dtype = dtype or next((a for a in args if isinstance(a, torch.dtype)), None)
    return _method("to")(x, dtype) if dtype is not None else x


def _dims(rank: int, dim: int, item: str) -> str:
    """An index expression that puts `item` at `dim` of a tensor of `rank` dims."""
    dim %= rank
    if dim == rank - 1 and rank > 2:
        return f"..., {item}"
    return ", ".join([":"] * dim + [item])


def _slice_text(start, end, step, size: int | None) -> str:
    start_text = "" if start in (0, None) else literal(start)
    open_end = end is None or (isinstance(end, int) and (end >= SLICE_END_MAX or (size is not None and end >= size)))
    end_text = "" if open_end else literal(end)
    return f"{start_text}:{end_text}" + ("" if step in (1, None) else f":{literal(step)}")


def _rank(node: fx.Node, index: int = 0) -> int:
    val = node.args[index].meta.get("val")
    return val.dim()


def _slice(node: fx.Node):
    def write(x, dim=0, start=None, end=None, step=1) -> Expr:
        size = node.args[0].meta["val"].shape[dim]
        return Expr(f"{x.at(ATOM)}[{_dims(_rank(node), dim, _slice_text(start, end, step, int(size)))}]")
    return write


def _select(node: fx.Node):
    return lambda x, dim, index: Expr(f"{x.at(ATOM)}[{_dims(_rank(node), dim, literal(index))}]")


def _index(x, indices) -> Expr:
    items = [":" if i is None else literal(i) for i in indices]
    return Expr(f"{x.at(ATOM)}[{', '.join(items)}]")


def _reduce(name: str):
    """mean/sum/amax over dims: `x.mean(-1, keepdim=True)`."""
    def write(x, dim=None, keepdim=False, dtype=None, **kwargs) -> Expr:
        args = [] if dim is None else [dim[0] if isinstance(dim, (list, tuple)) and len(dim) == 1 else dim]
        options = dict(keepdim=True) if keepdim else {}
        if dtype is not None:
            options["dtype"] = dtype
        return _method(name)(x, *args, **options, **kwargs)
    return write


def _factory(name: str):
    """torch.arange / ones / zeros / full: the defaults (device, layout, pin_memory) left out."""
    def write(*args, dtype=None, **_) -> Expr:
        return _call(f"torch.{name}")(*args, **({"dtype": dtype} if dtype is not None else {}))
    return write


def _new_factory(name: str):
    def write(x, size, *args, dtype=None, **_) -> Expr:
        return _method(name)(x, size, *args, **({"dtype": dtype} if dtype is not None else {}))
    return write


def _layer_norm(x, shape, weight=None, bias=None, eps=1e-5, *_) -> Expr:
    return _call("F.layer_norm")(x, shape, weight, bias, eps)


def _embedding(weight, indices, *_, **__) -> Expr:
    # padding_idx, scale_grad_by_freq and sparse change gradients only.
    return _call("F.embedding")(indices, weight)


def _gelu(x, approximate="none") -> Expr:
    return _call("F.gelu")(x) if approximate == "none" else _call("F.gelu")(x, approximate=approximate)


def _cat(tensors, dim=0) -> Expr:
    return Expr(f"torch.cat({literal(tensors)}, dim={dim})")


def _split(x, sizes, dim=0) -> Expr:
    return _method("split")(x, sizes, dim=dim)


def _softmax(x, dim, *_) -> Expr:
    return _method("softmax")(x, dim)


def _diff(x, n=1, dim=-1, prepend=None, append=None) -> Expr:
    options = {k: v for k, v in dict(dim=dim, prepend=prepend, append=append).items() if v is not None}
    return _method("diff")(x, *([n] if n != 1 else []), **options)


WRITERS: dict[Any, Callable[..., Expr]] = {
    aten.add.Tensor: _add, aten.add.Scalar: _add, aten.sub.Tensor: _sub, aten.sub.Scalar: _sub,
    aten.rsub.Scalar: lambda a, b, alpha=1: _sub(b, a, alpha),
    aten.mul.Tensor: _binary("*", PRODUCT), aten.mul.Scalar: _binary("*", PRODUCT),
    aten.div.Tensor: _div, aten.div.Scalar: _div, aten.div.Tensor_mode: _div,
    aten.floor_divide.default: _binary("//", PRODUCT), aten.remainder.Tensor: _binary("%", PRODUCT),
    aten.remainder.Scalar: _binary("%", PRODUCT),
    aten.pow.Tensor_Scalar: _pow, aten.pow.Tensor_Tensor: _pow, aten.pow.Scalar: _pow,
    aten.matmul.default: _binary("@", PRODUCT), aten.mm.default: _binary("@", PRODUCT),
    aten.bmm.default: _binary("@", PRODUCT),
    aten.neg.default: _unary("-"), aten.bitwise_not.default: _unary("~"),
    aten.eq.Tensor: _binary("==", COMPARISON), aten.eq.Scalar: _binary("==", COMPARISON),
    aten.ne.Tensor: _binary("!=", COMPARISON), aten.ne.Scalar: _binary("!=", COMPARISON),
    aten.lt.Tensor: _binary("<", COMPARISON), aten.lt.Scalar: _binary("<", COMPARISON),
    aten.le.Tensor: _binary("<=", COMPARISON), aten.le.Scalar: _binary("<=", COMPARISON),
    aten.gt.Tensor: _binary(">", COMPARISON), aten.gt.Scalar: _binary(">", COMPARISON),
    aten.ge.Tensor: _binary(">=", COMPARISON), aten.ge.Scalar: _binary(">=", COMPARISON),
    aten.__and__.Tensor: _binary("&", BIT_AND), aten.bitwise_and.Tensor: _binary("&", BIT_AND),
    aten.__or__.Tensor: _binary("|", BIT_OR), aten.bitwise_or.Tensor: _binary("|", BIT_OR),
    aten.bitwise_xor.Tensor: _binary("^", BIT_XOR),
    **{getattr(aten, f).default: _call(f"torch.{f}") for f in (
        "rsqrt", "sqrt", "exp", "log", "tanh", "sigmoid", "erf", "abs", "cos", "sin", "reciprocal",
        "logical_not")},
    aten.where.self: _call("torch.where"), aten.maximum.default: _call("torch.maximum"),
    aten.minimum.default: _call("torch.minimum"),
    aten.gelu.default: _gelu, aten.silu.default: _call("F.silu"), aten.relu.default: _call("F.relu"),
    aten.softmax.int: _softmax, aten._softmax.default: _softmax,
    aten.layer_norm.default: _layer_norm, aten.rms_norm.default: _call("F.rms_norm"),
    aten.embedding.default: _embedding, aten.linear.default: _call("F.linear"),
    aten.addmm.default: _call("torch.addmm"),
    aten.view.default: _method("view", spread=True), aten.reshape.default: _method("reshape", spread=True),
    aten._unsafe_view.default: _method("reshape", spread=True),
    aten.expand.default: _method("expand", spread=True), aten.permute.default: _method("permute", spread=True),
    aten.repeat.default: _method("repeat", spread=True), aten.transpose.int: _method("transpose"),
    aten.t.default: _method("t"), aten.unsqueeze.default: _method("unsqueeze"), aten.squeeze.dim: _method("squeeze"), aten.flatten.using_ints: _method("flatten"),
    aten.split.Tensor: _split, aten.split_with_sizes.default: _split, aten.chunk.default: _method("chunk"),
    aten.cat.default: _cat, aten.stack.default: _call("torch.stack"),
    aten.mean.dim: _reduce("mean"), aten.sum.dim_IntList: _reduce("sum"), aten.amax.default: _reduce("amax"),
    aten.var.correction: _reduce("var"), aten.cumsum.default: _method("cumsum"), aten.diff.default: _diff,
    aten.masked_fill.Scalar: _method("masked_fill"), aten.masked_fill.Tensor: _method("masked_fill"),
    aten.clamp.default: _method("clamp"), aten.index_select.default: _method("index_select"),
    aten.type_as.default: _method("type_as"),
    aten.to.dtype: _to, aten.to.dtype_layout: _to, aten.to.device: _to, aten._to_copy.default: _to,
    aten.arange.default: _factory("arange"), aten.arange.start: _factory("arange"),
    aten.arange.start_step: _factory("arange"), aten.ones.default: _factory("ones"),
    aten.zeros.default: _factory("zeros"), aten.full.default: _factory("full"),
    aten.scalar_tensor.default: _factory("tensor"),
    aten.new_ones.default: _new_factory("new_ones"), aten.new_zeros.default: _new_factory("new_zeros"),
    aten.new_full.default: _new_factory("new_full"),
    aten.ones_like.default: _factory("ones_like"), aten.zeros_like.default: _factory("zeros_like"),
    aten.full_like.default: _factory("full_like"), aten.index.Tensor: _index,
}
# Writers that look at the node's shapes (indexing needs the operand's rank).
NODE_WRITERS: dict[Any, Callable[[fx.Node], Callable[..., Expr]]] = {
    aten.slice.Tensor: _slice, aten.select.int: _select,
}


def expression(node: fx.Node, args: tuple, kwargs: dict) -> Expr:
    """The torch code computing `node` from its printed arguments."""
    if node.target is operator.getitem:
        return Expr(f"{args[0].at(ATOM)}[{literal(args[1])}]")
    writer = NODE_WRITERS[node.target](node) if node.target in NODE_WRITERS else WRITERS.get(node.target)
    if writer is not None:
        try:
            return writer(*args, **kwargs)
        except TypeError:  # an argument layout the short form does not cover: print the op itself
            pass
    if not isinstance(node.target, torch._ops.OpOverload):
        raise TypeError(f"cannot emit {node.target} ({node.name})")
    parts = [literal(a) for a in args] + [f"{k}={literal(v)}" for k, v in kwargs.items()]
    return Expr(f"{node.target}({', '.join(parts)})")


def readable(target) -> bool:
    """True when `target` prints as torch code rather than `aten.*`."""
    return target is operator.getitem or target in WRITERS or target in NODE_WRITERS
