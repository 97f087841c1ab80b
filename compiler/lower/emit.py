"""Print fx nodes as Python: the parts of generated modules copied from the captured graph.

Connective blocks, MLP activations, per-head transforms (RoPE), the prologue and the epilogue
are printed from the graph, so a model family nobody wrote a template for still compiles. They
are printed the way a person writes them (torch_code.py prints each op):

    identities dropped    `to` the same dtype, `* 1.0`, `+ 0`, `expand` to the same shape,
                          `alias`, eval-mode dropout, `_assert_*`, flattening [batch, seq] rows
    single uses inlined   a value read once is written into its reader (while short)
    values named          by the caller's roles (`residual`, `mask`, `cos`), else by what computes
                          them (`rsqrt`, `mean`), never by fx node names, so identical layers print
                          identical code
"""
from __future__ import annotations

import builtins
import keyword
import operator
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch
import torch.fx as fx

from galaxy.compiler.lower.torch_code import ATOM, Expr, expression
from galaxy.compiler.passes.patterns import IGNORED, aten, flattens_tokens

LINE_WIDTH = 100  # generated lines aim to stay within this
INLINE_MAX_CHARS = 60  # a value read once is written into its reader while at most this long
# Names a generated function may not bind: its parameters and the module's imports.
RESERVED = frozenset({"w", "static", "weights", "inputs", "ring", "ctx", "torch", "F", "aten", "sys",
                      "pathlib", "_"}) | frozenset(dir(builtins)) | frozenset(keyword.kwlist)
# What to call a value after the op that computes it, where the op's own name reads badly.
VALUE_NAMES = {
    "__and__": "both", "bitwise_and": "both", "__or__": "either", "bitwise_or": "either", "sum": "total",
    "pow": "power", "abs": "magnitude", "slice": "part", "select": "picked", "index": "picked",
    "to": "cast", "_to_copy": "cast", "type_as": "cast", "view": "reshaped", "reshape": "reshaped",
    "_unsafe_view": "reshaped", "unsqueeze": "expanded", "expand": "expanded", "linear": "projected",
    "layer_norm": "normed", "rms_norm": "normed", "mul": "product", "add": "total", "sub": "difference",
    "div": "ratio", "neg": "negated", "cat": "joined", "where": "chosen", "eq": "same", "ne": "changed",
    "le": "before", "lt": "before", "ge": "after", "gt": "after", "new_ones": "ones", "arange": "index",
    "split": "parts", "getitem": "part", "silu": "act", "gelu": "act", "relu": "act", "tanh": "act",
    "rsqrt": "inv_rms", "mean": "average",
}
_SAME_VALUE = {aten.alias.default, aten.detach.default, aten.lift_fresh_copy.default, aten.clone.default,
               aten.contiguous.default}
_CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default, aten.type_as.default}
_SHAPE_OPS = {aten.expand.default, aten.view.default, aten.reshape.default, aten._unsafe_view.default}
_NEUTRAL = {aten.add.Tensor: 0, aten.add.Scalar: 0, aten.sub.Tensor: 0, aten.sub.Scalar: 0,
            aten.mul.Tensor: 1, aten.mul.Scalar: 1, aten.div.Tensor: 1, aten.div.Scalar: 1}


@dataclass(frozen=True)
class Emitted:
    """Python lines computing some fx nodes, and the expression of each value asked for."""

    lines: tuple[str, ...]
    values: dict[str, str]  # output node name -> expression (a variable, a parameter, or inline code)
    sources: tuple[str, ...]  # the nodes whose op the lines print, in graph order


def _val(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _same_tensor_type(node: fx.Node, source) -> bool:
    out, into = _val(node), _val(source)
    return (out is not None and into is not None and out.dtype == into.dtype
            and tuple(out.shape) == tuple(into.shape))


def identity_of(node: fx.Node) -> fx.Node | None:
    """The input `node` returns unchanged (in eval mode, on the CPU), or None."""
    target, args = node.target, node.args
    if target in _SAME_VALUE:
        return args[0]
    if target == aten.dropout.default:
        train = args[2] if len(args) > 2 else node.kwargs.get("train", True)
        p = args[1] if len(args) > 1 else node.kwargs.get("p", 0.5)
        return args[0] if train is False or p == 0 else None
    source = args[0] if args and isinstance(args[0], fx.Node) else None
    if source is not None and flattens_tokens(node):
        return source  # the code keeps [batch, tokens, hidden], whatever a rank's tokens
    if source is None or not _same_tensor_type(node, source):
        return None
    if target in _CASTS or target in _SHAPE_OPS or target == aten.permute.default and list(args[1]) == sorted(args[1]):
        return source
    if target in _NEUTRAL and len(args) > 1 and not isinstance(args[1], fx.Node):
        alpha = node.kwargs.get("alpha", 1)
        return source if args[1] == _NEUTRAL[target] and alpha == 1 else None
    if target == aten.slice.Tensor:  # the same shape: a slice from 0 with step 1 takes it whole
        start = args[2] if len(args) > 2 else 0
        step = args[4] if len(args) > 4 else 1
        return source if start in (0, None) and step in (1, None) else None
    return None


def value_name(node: fx.Node) -> str:
    """What to call `node`'s value when no role names it: after its op (`x * rsqrt(...)` is `normed`)."""
    op = "getitem" if node.target is operator.getitem else getattr(node.target, "_opname", str(node.target))
    if op == "mul" and any(getattr(a, "target", None) == aten.rsqrt.default for a in node.args):
        return "normed"
    return VALUE_NAMES.get(op, op.strip("_"))


@dataclass
class _Printer:
    """State of one emit() call."""

    taken: set[str]
    reserved: dict[str, str] = field(default_factory=dict)  # node -> the name it must have
    hints: dict[str, str] = field(default_factory=dict)  # node -> a name it gets if still free
    exprs: dict[str, Expr] = field(default_factory=dict)  # node -> its printed value
    alias: dict[str, str] = field(default_factory=dict)  # dropped node -> the node it returns
    pending: set[str] = field(default_factory=set)  # nodes printed inline, not yet read

    def resolve(self, node: fx.Node | str) -> str:
        name = node.name if isinstance(node, fx.Node) else node
        while name in self.alias:
            name = self.alias[name]
        return name

    def name_roles(self, roles: Mapping[str, str], hints: Mapping[str, str], members: set[str]) -> None:
        """Reserve each role's name for its node among `members` (a name already taken becomes a hint)."""
        for name, hint in hints.items():
            self.hints.setdefault(self.resolve(name), hint)
        for name, role in roles.items():
            node = self.resolve(name)
            if node not in members:
                continue
            if role in self.taken or node in self.reserved:
                self.hints[node] = role
            else:
                self.reserved[node] = role
                self.taken.add(role)

    def fresh(self, base: str) -> str:
        base = base if base.isidentifier() and base not in RESERVED else f"{base}_"
        name, k = base, 2
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def name_for(self, node: fx.Node) -> str:
        if node.name in self.reserved:
            return self.reserved[node.name]
        return self.fresh(self.hints.get(node.name) or value_name(node))

    def read(self, node: fx.Node) -> Expr:
        name = self.resolve(node)
        if name not in self.exprs:
            raise KeyError(f"value {node.name} is not available here")
        self.pending.discard(name)
        return self.exprs[name]


def _use_counts(nodes: Sequence[fx.Node], printer: _Printer) -> dict[str, int]:
    uses: dict[str, int] = {}
    for node in nodes:
        if node.name in printer.alias:
            continue
        for arg in _node_args(node):
            name = printer.resolve(arg)
            uses[name] = uses.get(name, 0) + 1
    return uses


def _node_args(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: found.append(a) or a)
    return found


def emit(nodes: Sequence[fx.Node], externals: Mapping[str, str], outputs: Sequence[str] = (),
         roles: Mapping[str, str] | None = None, hints: Mapping[str, str] | None = None, *,
         inline_single_output: bool = False) -> Emitted:
    """Print `nodes` (in graph order) as Python lines.

    `externals` maps the values defined outside them (parameters, `w["..."]`, `static["..."]`) to
    their expressions; `outputs` are the values the caller needs, bound to variables named by
    `roles` (which may also name values inside); `hints` are names values get where still free.
    With `inline_single_output`, a lone output read nowhere else stays an expression (for
    `return <expr>`)."""
    taken = {text for text in externals.values() if text.isidentifier()} | set(RESERVED)
    printer = _Printer(taken)
    for name, text in externals.items():
        printer.exprs[name] = Expr(text, ATOM)
    members = [n for n in nodes if n.target not in IGNORED]
    for node in members:
        source = identity_of(node)
        if source is not None and isinstance(source, fx.Node):
            printer.alias[node.name] = printer.resolve(source)
    printer.name_roles(roles or {}, hints or {}, {n.name for n in members})
    uses = _use_counts(members, printer)
    wanted = {printer.resolve(o) for o in outputs}
    lone = inline_single_output and len(wanted) == 1 and not uses.get(next(iter(wanted)), 0)
    lines: list[str] = []
    sources: list[str] = []
    for node in members:
        if node.name in printer.alias:
            continue
        if node.target is operator.getitem and node.name in printer.exprs:
            continue  # bound when its tuple was unpacked
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), printer.read)
        expr = expression(node, args, kwargs)
        sources.append(node.name)
        if _unpacks(node, members):
            lines.append(_unpack(node, expr, printer))
            continue
        if node.name in wanted and not lone:
            var = printer.name_for(node)
            lines.append(f"{var} = {expr.text}")
            printer.exprs[node.name] = Expr(var)
        elif uses.get(node.name, 0) == 1 and len(expr.text) <= INLINE_MAX_CHARS or (lone and node.name in wanted):
            printer.exprs[node.name] = expr
            printer.pending.add(node.name)
        elif node.name not in wanted and not uses.get(node.name, 0):
            sources.pop()  # read by nothing here
        else:
            var = printer.name_for(node)
            lines.append(f"{var} = {expr.text}")
            printer.exprs[node.name] = Expr(var)
    values = {o: printer.exprs[printer.resolve(o)].text for o in outputs}
    return Emitted(tuple(lines), values, tuple(sources))


def _unpacks(node: fx.Node, members: Sequence[fx.Node]) -> bool:
    """A tuple-valued node whose every reader is a `getitem` here: printed as `a, b = ...`."""
    users = list(node.users)
    inside = {n.name for n in members}
    return (isinstance(node.meta.get("val"), (tuple, list)) and bool(users)
            and all(u.target is operator.getitem and u.name in inside for u in users))


def _unpack(node: fx.Node, expr: Expr, printer: _Printer) -> str:
    by_index = {u.args[1]: u for u in node.users}
    names = []
    for i in range(len(node.meta["val"])):
        item = by_index.get(i)
        if item is None:
            names.append("_")
            continue
        var = printer.name_for(item)
        printer.exprs[item.name] = Expr(var)
        names.append(var)
    return f"{', '.join(names)} = {expr.text}"



def dict_literal(items: Sequence[tuple[str, str]], indent: str = "    ") -> str:
    """`{"key": value, ...}` on one line, or one entry a line when that would run past LINE_WIDTH."""
    entries = [f'"{key}": {value}' for key, value in items]
    one_line = "{" + ", ".join(entries) + "}"
    if len(one_line) + len(indent) + len("return ") <= LINE_WIDTH:
        return one_line
    inner = indent * 2
    return "{\n" + "".join(f"{inner}{entry},\n" for entry in entries) + indent + "}"
