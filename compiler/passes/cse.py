"""Common-subexpression elimination for static nodes (masks, rotary tables, positions).

HF models recompute the same `cos.unsqueeze(1)` in every layer; merging those copies lets
identical layers share one generated function, which reads the value once from the prologue.
"""
from __future__ import annotations

import torch
import torch.fx as fx


def _key(node: fx.Node):
    def canon(a):
        if isinstance(a, fx.Node):
            return ("node", a.name)
        if isinstance(a, (list, tuple)):
            return tuple(canon(x) for x in a)
        if isinstance(a, dict):
            return tuple(sorted((k, canon(v)) for k, v in a.items()))
        return (type(a).__name__, repr(a))
    return (str(node.target), canon(node.args), canon(node.kwargs))


def _pure(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    if schema is None or schema.is_mutable:
        return False
    return not (isinstance(node.target, torch._ops.OpOverload)
                and torch.Tag.nondeterministic_seeded in node.target.tags)


def cse_static(gm: fx.GraphModule, dynamic: set[str]) -> int:
    """Merge duplicate pure nodes that are not in `dynamic`. Returns how many were removed."""
    seen: dict = {}
    removed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.name in dynamic or not _pure(node):
            continue
        key = _key(node)
        if key in seen:
            node.replace_all_uses_with(seen[key])
            gm.graph.erase_node(node)
            removed += 1
        else:
            seen[key] = node
    gm.recompile()
    return removed
