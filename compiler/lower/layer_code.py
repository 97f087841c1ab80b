"""The functions every layer shares (connective blocks, MLP activation, per-head transforms),
written once from layer 0 with layer-relative weight names, so identical layers share them.
Per-head transforms that print the same code (Llama's RoPE of q and of k) become one function."""
from __future__ import annotations

import torch.fx as fx

from galaxy.compiler.capture.trace import CapturedModel
from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.ir.graph import Layer, Region, TransformerGraph
from galaxy.compiler.ir.program import FunctionCode
from galaxy.compiler.lower.emit import emit
from galaxy.compiler.lower.regions import LayerNamer, region_function, relative_weight_name
from galaxy.compiler.lower.roles import graph_roles, stream_shape
from galaxy.compiler.passes.patterns import POINTWISE, aten

HEAD_KINDS = ("q", "k", "v")
_ARITHMETIC = {aten.mul.Tensor, aten.add.Tensor, aten.mul.Scalar, aten.add.Scalar}


class LayerCode:
    """The verbatim functions every layer shares, written from layer 0."""

    def __init__(self, graph: TransformerGraph, captured: CapturedModel, nodes: dict[str, fx.Node],
                 static_roles: dict[str, str]):
        self.graph, self.captured, self.nodes = graph, captured, nodes
        self.static_roles = static_roles
        self.first = graph.layers[0]
        self.namer = LayerNamer(graph, self.first, captured.fqns)

    def static_ref(self, name: str) -> str:
        if name in self.captured.fqns:
            return f'w["{relative_weight_name(self.captured.fqns[name])}"]'
        if name in self.static_roles:
            return f'static["{self.static_roles[name]}"]'
        raise UntraceableModelError("a layer reads a value that is neither a weight nor a prologue "
                                    "output", str(self.nodes[name].target), name)

    def functions(self, layer: Layer) -> list[FunctionCode]:
        """The layer's verbatim functions (its transforms, connective blocks and MLP activation)."""
        namer = LayerNamer(self.graph, layer, self.captured.fqns)
        fns = list(self.transforms(layer).values())
        fns = list({f.name: f for f in fns}.values()) + list(self.prepares(layer))
        att, mlp = layer.attention, layer.mlp
        if not layer.parallel:
            fns.append(self._connective(
                "after_attention", layer.after_attention, namer, namer.attn_out, {"attention.out.bias": att.out.bias},
                "The connective block after attention, copied from the graph, on the tokens this rank holds."))
        if layer.after_mlp is not None and self.first.after_mlp is not None:
            if layer.parallel:
                fn = self._connective(
                    "after_block", layer.after_mlp, namer, layer.block_output,
                    {"attention.out.bias": att.out.bias, "mlp.down.bias": mlp.down.bias},
                    "The connective block after attention and MLP, copied from the graph: the next layer's inputs.")
            else:
                fn = self._connective(
                    "after_mlp", layer.after_mlp, namer, namer.mlp_out, {"mlp.down.bias": mlp.down.bias},
                    "The connective block after the MLP, copied from the graph: the next layer's inputs.")
            fns.append(self._in_next_layer_order(fn, layer))
        fns.append(self.activation(layer))
        return fns

    def transforms(self, layer: Layer) -> dict[str, FunctionCode]:
        """Head kind (q, k, v) -> the function transforming it; kinds printing the same code share one."""
        att = layer.attention
        regions = {kind: getattr(att, f"{kind}_transform") for kind in HEAD_KINDS}
        shared = {kind: self._transform(region, "t") for kind, region in regions.items() if region.nodes}
        groups: dict[tuple, list[str]] = {}
        for kind, fn in shared.items():
            groups.setdefault((fn.body, fn.returns), []).append(kind)
        result = {}
        for kinds in groups.values():
            fn = shared[kinds[0]] if len(kinds) > 1 else self._transform(regions[kinds[0]], kinds[0])
            name = "rotary" if {"cos", "sin"} <= self._statics_read(regions[kinds[0]]) else f"{''.join(kinds)}_transform"
            what = " or ".join(kinds)
            layout = ("[batch, tokens, heads, head_dim] in, [batch, heads, tokens, head_dim] out"
                      if kinds[0] in att.seq_major else "[batch, heads, tokens, head_dim]")
            doc = (f"Rotary position embedding of {what} {layout} (cos and sin tables)."
                   if name == "rotary" else f"Per-head transform of {what}, {layout}.")
            for kind in kinds:
                result[kind] = FunctionCode(name, fn.params, fn.body, fn.returns, doc, fn.sources)
        return result

    def prepares(self, layer: Layer) -> tuple[FunctionCode, ...]:
        """The scalar ops between each projection and its split-heads view, as code named after the
        head kind it rewrites (`q`: returns the expression of the new q)."""
        found = []
        for kind in HEAD_KINDS:
            region = getattr(layer.attention, f"{kind}_prepare")
            if region.nodes:
                code = emit([self.nodes[n] for n in region.nodes], {region.inputs[0]: kind}, region.outputs,
                            inline_single_output=True)
                found.append(FunctionCode(f"{kind}_prepare", (kind,), code.lines,
                                          (code.values[region.outputs[0]],), "", code.sources))
        return tuple(found)

    def _statics_read(self, region: Region) -> set[str]:
        return {self.static_roles[n] for n in region.inputs[1:] if n in self.static_roles}

    def _transform(self, region: Region, param: str) -> FunctionCode:
        params = {region.inputs[0]: param}
        fn = region_function("transform", region, self.nodes, params, self.static_ref, "")
        return FunctionCode(fn.name, (param, "static"), fn.body, fn.returns, fn.doc, fn.sources)

    def _connective(self, name: str, region: Region, namer: LayerNamer, tp_output: str,
                    biases: dict[str, str | None], doc: str) -> FunctionCode:
        params = {n: namer.roles[n] for n in region.inputs if n in namer.roles}
        prelude = ()
        added = " + ".join(f'w["{key}"]' for key, bias in biases.items() if bias)
        if added:
            # The projections' biases must be added once, so they wait until the reduce-scatter.
            prelude = (f'{namer.roles[tp_output]} = {namer.roles[tp_output]} + {added}',)
        roles = dict(namer.roles)
        if region is namer.layer.after_mlp:
            roles.update(self._next_entry_roles(namer.layer))
        hints = graph_roles([self.nodes[n] for n in region.nodes], self.captured.fqns, stream_shape(self.graph))
        fn = region_function(name, region, self.nodes, params, self._layer_ref, doc, prelude, roles, hints)
        return FunctionCode(fn.name, (*fn.params, "w"), fn.body, fn.returns, fn.doc, fn.sources)

    def _next_entry_roles(self, layer: Layer) -> dict[str, str]:
        if layer.index + 1 >= len(self.graph.layers):
            return {}
        following = LayerNamer(self.graph, self.graph.layers[layer.index + 1], self.captured.fqns)
        return {n: following.roles[n] for n in following.entries}

    def _in_next_layer_order(self, fn: FunctionCode, layer: Layer) -> FunctionCode:
        """Return the values the next layer reads, in its parameter order."""
        entries = LayerNamer(self.graph, self.graph.layers[layer.index + 1], self.captured.fqns).entries
        by_node = dict(zip(layer.after_mlp.outputs, fn.returns))
        missing = [e for e in entries if e not in by_node]
        if missing:
            raise UntraceableModelError(f"layer {layer.index + 1} reads values from before layer "
                                        f"{layer.index}'s last block; skip connections across layers "
                                        "are not supported", "", missing[0])
        return FunctionCode(fn.name, fn.params, fn.body, tuple(by_node[e] for e in entries), fn.doc, fn.sources)

    def _layer_ref(self, name: str) -> str:
        if name in self.captured.fqns:
            return f'w["{relative_weight_name(self.captured.fqns[name])}"]'
        raise UntraceableModelError("a connective block reads a value from outside its layer",
                                    str(self.nodes[name].target), name)

    def projection_roles(self, layer: Layer) -> dict[str, str]:
        """MLP input projections by role: the one an activation function reads is `gate` when there
        are two (Llama's silu(gate) * up), the others `up`."""
        outputs = [p.output for p in layer.mlp.projections]
        if len(outputs) == 1:
            return {outputs[0]: "up"}
        members = set(layer.mlp.activation.nodes)
        gates = [o for o in outputs if any(u.name in members and u.target in POINTWISE - _ARITHMETIC
                                           for u in self.nodes[o].users)]
        gate = gates[0] if len(gates) == 1 else outputs[0]
        roles, k = {gate: "gate"}, 1
        for o in outputs:
            if o != gate:
                roles[o] = "up" if k == 1 else f"up_{k}"
                k += 1
        return roles

    def activation(self, layer: Layer) -> FunctionCode:
        mlp = layer.mlp
        names = self.projection_roles(layer)
        params = tuple(names[p.output] for p in mlp.projections)
        for ext in mlp.activation.inputs:
            if ext not in names:
                names[ext] = self.static_ref(ext)
        code = emit([self.nodes[n] for n in mlp.activation.nodes], names, (mlp.down.input,), {mlp.down.input: "h"})
        return FunctionCode("mlp_activation", params, code.lines, (code.values[mlp.down.input],),
                            "MLP activation copied from the graph.", code.sources)
