"""Fold at compile time the prologue values that depend on no user input.

A causal mask or the rotary tables of a fixed-length bundle are the same for every request, so
instead of generating the code that builds them, lowering computes them once from the captured
graph and stores them with each rank's weights (`static.<role>`, lower/roles.py). The prologue
keeps only what depends on the inputs: the embeddings, a mask built from `attention_mask`.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from galaxy.compiler.passes.patterns import IGNORED


def input_free(names: list[str], nodes: dict[str, fx.Node], user_inputs: tuple[str, ...]) -> list[str]:
    """Those of `names` whose value depends on no user input placeholder."""
    depends: dict[str, bool] = {}

    def on_inputs(node: fx.Node) -> bool:
        stack = [node]
        while stack:
            current = stack[-1]
            if current.name in depends:
                stack.pop()
                continue
            pending = [a for a in current.all_input_nodes if a.name not in depends]
            if pending:
                stack.extend(pending)
                continue
            depends[current.name] = current.name in user_inputs or any(
                depends[a.name] for a in current.all_input_nodes)
            stack.pop()
        return depends[node.name]

    return [n for n in names if not on_inputs(nodes[n])]


def evaluate(names: list[str], nodes: dict[str, fx.Node], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The values of `names` (input-free nodes), computed from the captured weights `tensors`."""
    order = {n: i for i, n in enumerate(nodes)}
    needed, stack = set(), list(names)
    while stack:
        name = stack.pop()
        if name not in needed and name not in tensors:
            needed.add(name)
            stack.extend(a.name for a in nodes[name].all_input_nodes)
    env: dict[str, object] = dict(tensors)
    with torch.inference_mode():
        for name in sorted(needed, key=order.__getitem__):
            node = nodes[name]
            if node.op != "call_function":
                raise ValueError(f"cannot fold {name}: it reads {node.op} {node.target}")
            if node.target in IGNORED:
                continue
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda a: env[a.name])
            env[name] = node.target(*args, **kwargs)
    return {n: env[n].contiguous().clone() for n in names}
