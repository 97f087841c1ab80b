"""The error a plan's wire dtype costs, measured once at compile time on one process.

An action that sends activations in float16 or bfloat16 rounds them where it runs. This pass runs
the captured graph on the example inputs (torch.fx.Interpreter) rounding the same values through
the wire dtype (`x.to(wire).to(x.dtype)`) at the same borders, and reports the largest absolute
difference of each output from the unrounded reference:

    AG       the block's input, as its first projections read it (the residual keeps its own copy)
    RS, AR   the block's output (the partial sums the collective adds)
    KVAG     the keys and values
    SCATTER  the layer inputs of the first layer
    SEND     the hidden states a stage hands on (the next stage reads them whole)
    GATHER   the values the head reads

A reduce-scatter rounds each hop's running sum, which a single process cannot replay without the
split, so the figure is the expected size of the error, not a bound; `galaxy-run` reports the
error it actually measures.
"""
from __future__ import annotations

import torch
import torch.fx as fx

from galaxy.compiler.capture.trace import CapturedModel
from galaxy.compiler.ir.graph import Layer, TransformerGraph
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.schedule import Action

WIRE_TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def expected_wire_error(captured: CapturedModel, graph: TransformerGraph, plan: Plan) -> dict[str, float]:
    """Max absolute error of each output when the plan's actions round their activations; empty when
    every action sends float32 (nothing is rounded)."""
    borders = _borders(graph, plan, set(captured.fqns))
    if not borders or not captured.reference_outputs:
        return {}
    rounded = _RoundingInterpreter(captured.graph_module, borders).run(*_placeholder_values(captured))
    outputs = dict(zip(captured.output_names, rounded if isinstance(rounded, (tuple, list)) else [rounded]))
    return {name: (outputs[name].double() - expected.double()).abs().max().item() if expected.numel() else 0.0
            for name, expected in captured.reference_outputs.items()}


# node -> (wire dtype, the consumers that read it rounded; None for every consumer)
Borders = dict[str, tuple[torch.dtype, set[str] | None]]


def _borders(graph: TransformerGraph, plan: Plan, weights: set[str]) -> Borders:
    borders: Borders = {}

    def at(node: str, action: Action, consumers: set[str] | None = None) -> None:
        if action.wire in WIRE_TORCH:
            borders[node] = (WIRE_TORCH[action.wire], consumers)

    for stage in plan.stages:
        schedule = stage.schedule
        for layer in graph.layers[stage.first_layer:stage.end_layer]:
            for block in schedule.layer:
                for action in block.actions:
                    for node, consumers in _action_nodes(layer, block.block, action.op):
                        at(node, action, consumers)
        if stage.first_layer == 0 and schedule.enter.op == "SCATTER":
            for node in _layer_entries(graph.layers[0], weights):
                at(node, schedule.enter)
        if schedule.exit is not None and stage.end_layer < len(graph.layers):
            for node in _layer_entries(graph.layers[stage.end_layer], weights):
                at(node, schedule.exit)
        elif schedule.exit is not None:
            for node in graph.epilogue.inputs:
                at(node, schedule.exit, set(graph.epilogue.nodes))
    return borders


def _action_nodes(layer: Layer, block: str, op: str) -> list[tuple[str, set[str] | None]]:
    attention, mlp = layer.attention, layer.mlp
    if op == "KVAG":
        return [(attention.k.output, None), (attention.v.output, None)]
    if op in ("RS", "AR") and block == "par":  # a parallel block reduces the sum of both outputs
        return [(layer.block_output, None)]
    if op in ("RS", "AR"):
        return [(attention.out.output if block == "attn" else mlp.down.output, None)]
    if block == "par":
        both = {n for p in (attention.q, attention.k, attention.v, *mlp.projections) for n in p.nodes}
        return [(source, both) for source in dict.fromkeys((attention.input, mlp.input))]
    projections = (attention.q, attention.k, attention.v) if block == "attn" else mlp.projections
    source = attention.input if block == "attn" else mlp.input
    return [(source, {n for p in projections for n in p.nodes})]


def _layer_entries(layer: Layer, weights: set[str]) -> list[str]:
    """The values a layer reads from before it: its attention input and what its connective blocks
    read that neither the layer computes nor a weight holds (the residual)."""
    made = set(layer.after_attention.nodes) | set(layer.after_mlp.nodes if layer.after_mlp else ())
    made |= {layer.attention.out.output, layer.mlp.down.output}
    entries = [layer.attention.input]
    for region in (layer.after_attention, layer.after_mlp):
        for name in region.inputs if region else ():
            if name not in made and name not in weights and name not in entries:
                entries.append(name)
    return entries


def _placeholder_values(captured: CapturedModel) -> list[torch.Tensor]:
    values = []
    for node in captured.graph_module.graph.nodes:
        if node.op == "placeholder":
            values.append(captured.tensors[node.name] if node.name in captured.tensors
                          else captured.example_inputs[node.name])
    return values


class _RoundingInterpreter(fx.Interpreter):
    """Runs the graph, handing rounded copies of the border values to the consumers that read them so."""

    def __init__(self, module: fx.GraphModule, borders: Borders):
        super().__init__(module)
        self.borders = borders

    def run_node(self, node: fx.Node):
        with torch.inference_mode():
            result = super().run_node(node)
        wire, consumers = self.borders.get(node.name, (None, None))
        if wire is not None and consumers is None and isinstance(result, torch.Tensor):
            return result.to(wire).to(result.dtype)
        return result

    def fetch_args_kwargs_from_env(self, node: fx.Node):
        args, kwargs = super().fetch_args_kwargs_from_env(node)
        rounded = {name for name, (_, readers) in self.borders.items() if readers and node.name in readers}
        if not rounded:
            return args, kwargs

        def swap(value, arg):
            if isinstance(arg, fx.Node) and arg.name in rounded and isinstance(value, torch.Tensor):
                wire = self.borders[arg.name][0]
                return value.to(wire).to(value.dtype)
            return value

        args = tuple(swap(v, a) for v, a in zip(args, node.args)) + tuple(args[len(node.args):])
        kwargs = {k: swap(v, node.kwargs.get(k)) for k, v in kwargs.items()}
        return args, kwargs
