"""Which prologue values each rank needs, and which weights computing them takes.

Every rank computes the static values the layers read whole (masks, rotary tables); only rank
0 computes the layer inputs (embeddings) and scatters them by tokens, so only it holds the
embedding weights. Megatron-style plans compute the inputs everywhere.
"""
from __future__ import annotations

import torch.fx as fx

from galaxy.compiler.ir.graph import TransformerGraph


def layer_statics(graph: TransformerGraph) -> list[str]:
    """Prologue values the layers read whole (masks, rotary tables)."""
    att, mlp = graph.layers[0].attention, graph.layers[0].mlp
    wanted = [att.mask, *att.q_transform.inputs[1:], *att.k_transform.inputs[1:],
              *att.v_transform.inputs[1:], *mlp.activation.inputs]
    return [n for n in dict.fromkeys(wanted) if n and n in graph.prologue.outputs]


def layer_inputs(graph: TransformerGraph) -> list[str]:
    """Prologue values that enter the first layer split by tokens (the embeddings)."""
    return [n for n in graph.prologue.outputs if n in graph.token_sliced]


def epilogue_statics(graph: TransformerGraph) -> list[str]:
    return [n for n in graph.epilogue.inputs if n in graph.prologue.outputs]


def needed_nodes(graph: TransformerGraph, nodes: dict[str, fx.Node], outputs: set[str]) -> list[str]:
    """Prologue nodes that computing `outputs` takes, in graph order."""
    members = set(graph.prologue.nodes)
    keep, stack = set(), [n for n in outputs if n in members]
    while stack:
        name = stack.pop()
        if name not in keep:
            keep.add(name)
            stack.extend(a.name for a in nodes[name].all_input_nodes if a.name in members)
    return [n for n in graph.prologue.nodes if n in keep]


def weights_of(node_names: list[str], nodes: dict[str, fx.Node], weights: set[str]) -> set[str]:
    """Weight placeholders that the given nodes read."""
    return {a.name for n in node_names for a in nodes[n].all_input_nodes if a.name in weights}
