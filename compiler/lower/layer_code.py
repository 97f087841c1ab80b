"""The functions every layer shares (connective blocks, MLP activation, per-head transforms),
written once from layer 0 with layer-relative weight names, so identical layers share them."""
from __future__ import annotations

import torch.fx as fx

from galaxy.compiler.capture.trace import CapturedModel
from galaxy.compiler.lower.emit import emit_nodes
from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.ir.graph import Layer, Region, TransformerGraph
from galaxy.compiler.ir.program import FunctionCode
from galaxy.compiler.lower.regions import LayerNamer, region_function, relative_weight_name, same_shape_names


class LayerCode:
    """The verbatim functions every layer shares, written from layer 0."""

    def __init__(self, graph: TransformerGraph, captured: CapturedModel, nodes: dict[str, fx.Node]):
        self.graph, self.captured, self.nodes = graph, captured, nodes
        self.first = graph.layers[0]
        self.namer = LayerNamer(graph, self.first, captured.fqns)

    def static_ref(self, name: str) -> str:
        if name in self.captured.fqns:
            return f'w["{relative_weight_name(self.captured.fqns[name])}"]'
        if name in self.graph.prologue.outputs:
            return f'static["{name}"]'
        raise UntraceableModelError("a layer reads a value that is neither a weight nor a prologue "
                                    "output", str(self.nodes[name].target), name)

    def functions(self, layer: Layer) -> list[FunctionCode]:
        """The layer's verbatim functions, written with layer 0's variable names."""
        namer = LayerNamer(self.graph, layer, self.captured.fqns)
        first = self.first
        fns = [self._transform(kind, getattr(layer.attention, f"{kind}_transform"),
                               getattr(first.attention, f"{kind}_transform")) for kind in "qkv"]
        fns.append(self._connective("after_attention", layer.after_attention, first.after_attention,
                                    namer, namer.attn_out, "attention.out.bias", layer.attention.out.bias))
        if layer.after_mlp is not None and first.after_mlp is not None:
            fn = self._connective("after_mlp", layer.after_mlp, first.after_mlp, namer,
                                  namer.mlp_out, "mlp.down.bias", layer.mlp.down.bias)
            fns.append(self._in_next_layer_order(fn, layer))
        fns.append(self.activation(layer))
        return [f for f in fns if f is not None]

    def _transform(self, kind: str, region: Region, reference: Region) -> FunctionCode | None:
        if not region.nodes:
            return None
        params = {region.inputs[0]: kind}
        for name in region.inputs[1:]:
            params[name] = self.static_ref(name)
        fn = region_function(f"{kind}_transform", region, self.nodes, params, self.static_ref,
                             f"Per-head transform of {kind} copied from the graph (e.g. rotary embedding).",
                             variables=same_shape_names(region, reference))
        return FunctionCode(fn.name, (kind, "static"), fn.body, fn.returns, fn.doc, fn.sources)

    def _connective(self, name: str, region: Region, reference: Region, namer: LayerNamer,
                    tp_output: str, bias_key: str, bias: str | None) -> FunctionCode:
        params = {n: namer.roles[n] for n in region.inputs if n in namer.roles}
        prelude = ()
        if bias:
            # The projection's bias must be added once, so it waits until the reduce-scatter.
            prelude = (f'{namer.roles[tp_output]} = {namer.roles[tp_output]} + w["{bias_key}"]',)
        fn = region_function(name, region, self.nodes, params, self._layer_ref,
                             "Connective block on this rank's tokens, copied from the graph.", prelude,
                             variables=same_shape_names(region, reference))
        return FunctionCode(fn.name, (*fn.params, "w"), fn.body, fn.returns, fn.doc, fn.sources)

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

    def activation(self, layer: Layer) -> FunctionCode:
        first = self.first.mlp
        mlp = layer.mlp
        names = {p.output: q.output for p, q in zip(mlp.projections, first.projections)}
        for ext in mlp.activation.inputs:
            if ext not in names:
                names[ext] = self.static_ref(ext)
        body = emit_nodes([self.nodes[n] for n in mlp.activation.nodes], names,
                          same_shape_names(mlp.activation, first.activation))
        return FunctionCode("mlp_activation", tuple(p.output for p in first.projections), tuple(body),
                            (names[mlp.down.input],), "MLP activation copied from the graph.")
