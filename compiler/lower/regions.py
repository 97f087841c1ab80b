"""Turn the verbatim regions of a TransformerGraph into generated functions.

Layer functions are written once, from layer 0, with weights named relative to the layer
(`w["post_attention_layernorm.weight"]`), then every other layer is checked to produce the
same code; identical layers share one function called in a loop.
"""
from __future__ import annotations

import torch.fx as fx

from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.ir.graph import Layer, Region, TransformerGraph
from galaxy.compiler.ir.program import FunctionCode
from galaxy.compiler.lower.emit import emit


def relative_weight_name(fqn: str) -> str:
    """'model.layers.3.input_layernorm.weight' -> 'input_layernorm.weight' (key inside a layer)."""
    parts = fqn.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[i + 1:])
    return fqn


class LayerNamer:
    """Names used inside the generated layer loop for the values of one layer."""

    def __init__(self, graph: TransformerGraph, layer: Layer, fqns: dict[str, str]):
        self.graph, self.layer, self.fqns = graph, layer, fqns
        att, mlp = layer.attention, layer.mlp
        self.attn_out = att.out.output
        self.mlp_out = mlp.down.output
        inside = set(layer.after_attention.nodes) | set(layer.after_mlp.nodes if layer.after_mlp else ())
        inside |= {self.attn_out, self.mlp_out} | ({layer.block_output} if layer.parallel else set())
        external = [att.input] + ([mlp.input] if layer.parallel and mlp.input != att.input else [])
        # The last layer's closing connective block runs in the epilogue, which may read the residual.
        last = graph.epilogue if layer.index == len(graph.layers) - 1 else None
        for region in (layer.after_attention, layer.after_mlp, last):
            for name in region.inputs if region else ():
                static = name in graph.prologue.outputs and name not in graph.token_sliced
                if name not in inside and name not in fqns and name not in external and not static:
                    external.append(name)
        if mlp.input not in inside and mlp.input not in external:
            raise UntraceableModelError(f"layer {layer.index}: the MLP reads a value from before the layer that "
                                        "its attention does not read", "", mlp.input)
        self.entries = tuple(external)
        self.roles: dict[str, str] = {}
        for name in external:
            role = "x" if name == att.input else "x_mlp" if name == mlp.input else "residual"
            self.roles[name] = self._fresh(role)
        self.roles[self.attn_out] = "attn_out"
        self.roles[self.mlp_out] = "mlp_out"
        if layer.parallel:
            self.roles[layer.block_output] = "out"
        for name in layer.after_attention.outputs:
            self.roles.setdefault(name, self._fresh("hidden" if name == mlp.input else "residual"))

    @property
    def block_inputs(self) -> tuple[str, ...]:
        """Names of what a parallel layer's block reads: x, or x and x_mlp."""
        att, mlp = self.layer.attention, self.layer.mlp
        return tuple(dict.fromkeys(self.roles[n] for n in (att.input, mlp.input)))

    def _fresh(self, base: str) -> str:
        taken = set(getattr(self, "roles", {}).values())
        name, k = base, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name

    def weight(self, placeholder: str) -> str:
        return f'w["{relative_weight_name(self.fqns[placeholder])}"]'


def region_function(name: str, region: Region, nodes: dict[str, fx.Node], params: dict[str, str],
                    weight_ref, doc: str, prelude: tuple[str, ...] = (),
                    roles: dict[str, str] | None = None, hints: dict[str, str] | None = None) -> FunctionCode:
    """A function computing `region`; `params` maps external node -> parameter name, `roles` names
    the outputs (and any value inside), `hints` names values where still free."""
    names = dict(params)
    for ext in region.inputs:
        if ext not in names:
            names[ext] = weight_ref(ext)
    code = emit([nodes[n] for n in region.nodes], names, region.outputs, roles, hints,
                inline_single_output=len(region.outputs) == 1)
    returns = tuple(code.values[o] for o in region.outputs)
    return FunctionCode(name, tuple(dict.fromkeys(params.values())), (*prelude, *code.lines), returns, doc,
                        code.sources)


def check_layers_match(graph: TransformerGraph, build) -> None:
    """Every layer must generate the same code as layer 0 once its nodes carry layer 0's names."""
    def code(layer):
        return [(f.name, f.params, f.body, f.returns) for f in build(layer)]
    reference = code(graph.layers[0])
    for layer in graph.layers[1:-1]:
        if code(layer) != reference:
            raise UntraceableModelError(
                f"layer {layer.index} differs in structure from layer 0; Galaxy generates one "
                "function for all layers and cannot shard layers of different shapes yet")
