"""Print fx nodes as Python: the verbatim parts of generated modules.

Connective blocks, MLP activations, per-head transforms (RoPE), the prologue and the
epilogue are copied from the captured graph op for op, so a model family nobody wrote a
template for still compiles. Each line is `name = aten.op.overload(args)`.
"""
from __future__ import annotations

import math
import operator
from typing import Callable

import torch
import torch.fx as fx

from galaxy.compiler.passes.patterns import IGNORED, aten

# Identity in eval mode: the input is reused instead of emitting a call.
_PASS_THROUGH = {aten.alias.default, aten.detach.default}


def format_arg(arg, names: Callable[[fx.Node], str]) -> str:
    if isinstance(arg, fx.Node):
        return names(arg)
    if isinstance(arg, (list, tuple)):
        inner = ", ".join(format_arg(a, names) for a in arg)
        return f"[{inner}]" if isinstance(arg, list) else f"({inner}{',' if len(arg) == 1 else ''})"
    if isinstance(arg, torch.dtype):
        return str(arg)
    if isinstance(arg, torch.device):
        return f"torch.device({str(arg)!r})"
    if isinstance(arg, (torch.layout, torch.memory_format)):
        return str(arg)
    if isinstance(arg, float) and not math.isfinite(arg):
        return f"float({str(arg)!r})"
    if isinstance(arg, (int, float, bool, str)) or arg is None:
        return repr(arg)
    raise TypeError(f"cannot print argument {arg!r} of type {type(arg).__name__}")


def emit_nodes(nodes: list[fx.Node], names: dict[str, str],
               variables: dict[str, str] | None = None) -> list[str]:
    """Python lines computing `nodes` in order. `names` maps node name -> expression and is
    extended with every node emitted (or aliased). `variables` renames emitted variables
    (used to write layer k with layer 0's names and compare the code)."""
    lines = []
    variables = variables or {}

    def ref(node: fx.Node) -> str:
        if node.name not in names:
            raise KeyError(f"value {node.name} is not available here")
        return names[node.name]

    for node in nodes:
        if node.target in IGNORED:
            continue
        if node.target in _PASS_THROUGH or _is_eval_dropout(node):
            names[node.name] = ref(node.args[0])
            continue
        if node.target is operator.getitem:
            var = names[node.name] = variables.get(node.name, node.name)
            lines.append(f"{var} = {ref(node.args[0])}[{node.args[1]!r}]")
            continue
        if not isinstance(node.target, torch._ops.OpOverload):
            raise TypeError(f"cannot emit {node.target} ({node.name})")
        args = [format_arg(a, ref) for a in node.args]
        args += [f"{k}={format_arg(v, ref)}" for k, v in node.kwargs.items()]
        var = names[node.name] = variables.get(node.name, node.name)
        lines.append(f"{var} = {node.target}({', '.join(args)})")
    return lines


def _is_eval_dropout(node: fx.Node) -> bool:
    if node.target != aten.dropout.default:
        return False
    train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", True)
    return train is False
