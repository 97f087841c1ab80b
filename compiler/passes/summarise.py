"""TransformerGraph -> ModelSummary: the numbers the cost model and the planner need."""
from __future__ import annotations

import torch
import torch.fx as fx

from galaxy.compiler.capture.trace import CapturedModel
from galaxy.compiler.ir.graph import Region, TransformerGraph
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.passes.patterns import aten, shape
from galaxy.compiler.passes.prologue import (epilogue_statics, layer_inputs, layer_statics, needed_nodes,
                                             weights_of)


def _param_bytes(names, captured: CapturedModel) -> int:
    seen = {captured.fqns[n] for n in names if n in captured.fqns}
    by_fqn = {captured.fqns[n]: captured.tensors[n] for n in captured.fqns}
    return sum(by_fqn[f].numel() * by_fqn[f].element_size() for f in seen)


def _linear_flops(region: Region, nodes: dict[str, fx.Node]) -> float:
    """2 * rows * in * out for every matrix product in a verbatim region."""
    flops = 0.0
    for name in region.nodes:
        node = nodes[name]
        if node.target in (aten.linear.default, aten.addmm.default, aten.mm.default, aten.matmul.default):
            out = shape(node) or ()
            x = node.args[1] if node.target == aten.addmm.default else node.args[0]
            in_features = (shape(x) or (0,))[-1]
            rows = 1
            for s in out[:-1]:
                rows *= s
            flops += 2.0 * rows * in_features * (out[-1] if out else 0)
    return flops


def summarise(graph: TransformerGraph, captured: CapturedModel) -> ModelSummary:
    nodes = {n.name: n for n in captured.graph_module.graph.nodes}
    first = graph.layers[0]
    att, mlp = first.attention, first.mlp
    dtype_bytes = captured.tensors[att.q.weight].element_size()
    weights = set(captured.fqns)
    every_rank = weights_of(needed_nodes(graph, nodes, set(layer_statics(graph))), nodes, weights)
    rank_0_outputs = set(layer_inputs(graph)) | set(epilogue_statics(graph))
    rank_0 = (weights_of(needed_nodes(graph, nodes, rank_0_outputs), nodes, weights)
              | {n for n in graph.epilogue.inputs if n in weights}) - every_rank
    connective = [*first.after_attention.inputs, *(first.after_mlp.inputs if first.after_mlp else ()),
                  att.out.bias, mlp.down.bias]
    return ModelSummary(
        name=graph.name, batch=graph.batch, seq_len=graph.seq_len, hidden=graph.hidden,
        n_layers=len(graph.layers), heads=att.heads, kv_heads=att.kv_heads, head_dim=att.head_dim,
        intermediate=mlp.intermediate, gated_mlp=len(mlp.projections) > 1,
        attention_bias=any(p.bias for p in (att.q, att.k, att.v)),
        mlp_bias=any(p.bias for p in mlp.projections), dtype_bytes=dtype_bytes,
        prologue_param_bytes=_param_bytes(every_rank, captured),
        prologue_flops=_linear_flops(graph.prologue, nodes),
        epilogue_param_bytes=_param_bytes(rank_0, captured),
        epilogue_flops=_linear_flops(graph.epilogue, nodes),
        connective_param_bytes_per_layer=_param_bytes([c for c in connective if c], captured),
        layer_entry_tensors=len(layer_inputs(graph)),
        head_input_tensors=sum(1 for n in graph.epilogue.inputs
                               if n not in weights and n not in graph.prologue.outputs),
        parallel_block_inputs=(1 if att.input == mlp.input else 2) if first.parallel else 0,
    )


def dtype_of(captured: CapturedModel) -> torch.dtype:
    return next(iter(captured.tensors.values())).dtype
