"""Lowering: TransformerGraph + Plan -> one RankProgram (code pieces + weights) per rank."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch
import torch.fx as fx

from galaxy.compiler.capture.trace import CapturedModel
from galaxy.compiler.errors import UntraceableModelError
from galaxy.compiler.ir.graph import Layer, TransformerGraph
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.program import AttentionCode, FunctionCode, MLPCode, RankProgram, StagePosition
from galaxy.compiler.lower.layer_code import LayerCode
from galaxy.compiler.lower.regions import LayerNamer, check_layers_match, relative_weight_name
from galaxy.compiler.lower.weights import attention_weights, mlp_weights
from galaxy.compiler.lower.emit import emit_nodes
from galaxy.compiler.passes.prologue import epilogue_statics, layer_inputs, layer_statics, needed_nodes
from galaxy.runtime.splits import offsets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoweredRank:
    program: RankProgram
    weights: dict[str, torch.Tensor]


def plan_id(plan: Plan) -> str:
    return hashlib.sha256(plan.dumps().encode()).hexdigest()[:8]


def lower(graph: TransformerGraph, captured: CapturedModel, plan: Plan, source: str) -> list[LoweredRank]:
    nodes = {n.name: n for n in captured.graph_module.graph.nodes}
    layer_code = LayerCode(graph, captured, nodes)
    check_layers_match(graph, layer_code.functions)
    shared = {f.name: f for f in layer_code.functions(layer_code.first)}
    return [_lower_rank(rank, graph, captured, plan, layer_code, shared, source)
            for rank in range(plan.world_size)]


def _lower_rank(rank: int, graph: TransformerGraph, captured: CapturedModel, plan: Plan,
                code: LayerCode, fns: dict[str, FunctionCode], source: str) -> LoweredRank:
    stage_index = plan.stage_of_rank(rank)
    stage = plan.stages[stage_index]
    i = stage.ranks.index(rank)
    att, mlp = code.first.attention, code.first.mlp
    if stage.schedule.shards_weights:
        heads, kv_heads = _range(stage.heads_per_rank, i), _range(stage.kv_heads_per_rank, i)
        columns = _range(stage.columns_per_rank, i)
    else:  # sequence parallelism only, or one rank: it holds every weight
        heads, kv_heads, columns = range(att.heads), range(att.kv_heads), range(mlp.intermediate)
    position = StagePosition(
        index=stage_index, count=len(plan.stages), ring_index=i, first_layer=stage.first_layer,
        end_layer=stage.end_layer,
        previous_leader=plan.stages[stage_index - 1].ranks[0] if stage_index else None,
        next_ranks=plan.stages[stage_index + 1].ranks if stage_index + 1 < len(plan.stages) else (),
        last_leader=plan.stages[-1].ranks[0], input_source=plan.stages[0].ranks.index(0))

    weights: dict[str, torch.Tensor] = {}
    for layer in graph.layers[stage.first_layer:stage.end_layer]:
        weights.update(_layer_weights(layer, captured, heads, kv_heads, columns))

    needed = set(layer_statics(graph))
    if rank == 0 or stage.schedule.enter.op == "REP":  # the ranks that compute the layer inputs
        needed |= set(layer_inputs(graph))
    if rank == 0:
        needed |= set(epilogue_statics(graph))
    prologue, prologue_weights = _prologue(graph, captured, code.nodes, needed)
    weights.update(prologue_weights)
    epilogue = None
    if rank == 0:
        epilogue, epilogue_weights = _epilogue(graph, captured, code)
        weights.update(epilogue_weights)

    d = att.head_dim
    attention = AttentionCode(
        heads=len(heads), kv_heads=len(kv_heads), head_dim=d, first_head=heads.start,
        total_heads=att.heads, split_sizes=(len(heads) * d, len(kv_heads) * d, len(kv_heads) * d),
        has_bias=any(p.bias for p in (att.q, att.k, att.v)),
        q_transform="q_transform" if "q_transform" in fns else None,
        k_transform="k_transform" if "k_transform" in fns else None,
        v_transform="v_transform" if "v_transform" in fns else None,
        mask=att.mask, is_causal=att.is_causal, scale=att.scale,
        sources=(att.q.output, att.k.output, att.v.output, att.sdpa, att.out.output))
    activation = fns["mlp_activation"]
    mlp_code = MLPCode(
        columns=len(columns), first_column=columns.start, total_columns=mlp.intermediate,
        projection_names=activation.params, has_bias=any(p.bias for p in mlp.projections),
        activation=activation.body, activation_output=activation.returns[0],
        sources=(*(p.output for p in mlp.projections), mlp.down.output))
    namer = code.namer
    last = graph.layers[-1]
    last_namer = LayerNamer(graph, last, captured.fqns)
    epilogue_entries = tuple(last_namer.roles[n] for n in graph.epilogue.inputs if n in last_namer.roles)
    shape_of = lambda name: tuple(int(d) for d in code.nodes[name].meta["val"].shape)  # noqa: E731
    program = RankProgram(
        rank=rank, world_size=plan.world_size, stage=position, device=plan.devices[rank], source=source,
        cluster=plan.cluster, plan_id=plan_id(plan), predicted_latency_s=plan.predicted_latency_s,
        batch=graph.batch, seq_len=graph.seq_len, hidden=graph.hidden, n_layers=len(graph.layers),
        tokens_per_rank=stage.tokens_per_rank, schedule=stage.schedule,
        head_receive=plan.head_receive if rank == 0 else None,
        query_row_statics=_query_row_statics(graph, code) if stage.schedule.block("attn").shape == "sequence" else (),
        attention=attention, mlp=mlp_code,
        transforms=tuple(fns[k] for k in ("q_transform", "k_transform", "v_transform") if k in fns),
        prologue=prologue, after_attention=fns["after_attention"], after_mlp=fns.get("after_mlp"),
        epilogue=epilogue, layer_entries=namer.entries,
        layer_entry_roles=tuple(namer.roles[n] for n in namer.entries),
        entry_shapes=tuple(shape_of(n) for n in namer.entries),
        after_attention_outputs=tuple(namer.roles[o] for o in code.first.after_attention.outputs),
        mlp_input=namer.roles[code.first.mlp.input],
        epilogue_entries=epilogue_entries,
        epilogue_entry_shapes=tuple(shape_of(n) for n in graph.epilogue.inputs if n in last_namer.roles),
        output_names=graph.output_names,
        weight_file=f"weights/rank_{rank}.safetensors",
    )
    return LoweredRank(program, weights)


def _query_row_statics(graph: TransformerGraph, code: LayerCode) -> tuple[str, ...]:
    """Prologue values attention reads per query position (masks, rotary tables): a rank that runs
    only its own queries keeps their rows, along dim -2 as in q's [batch, heads, seq, dim]."""
    att = code.first.attention
    names = [att.mask] if att.mask else []
    for region in (att.q_transform, att.k_transform, att.v_transform):
        names += [n for n in region.inputs[1:] if n in graph.prologue.outputs] if region.nodes else []
    rows = []
    for name in dict.fromkeys(names):
        shape = tuple(code.nodes[name].meta["val"].shape)
        if len(shape) >= 2 and shape[-2] == graph.seq_len:
            rows.append(name)
        elif len(shape) >= 2 and shape[-2] != 1:  # scalars, vectors and broadcast rows stay whole
            raise UntraceableModelError(f"sequence parallelism only needs the query rows of {name} "
                                        f"(shape {list(shape)}) along dim -2; plan it with tensor "
                                        "parallelism instead", "", name)
    return tuple(rows)


def _layer_weights(layer: Layer, captured: CapturedModel, heads: range, kv_heads: range,
                   columns: range) -> dict[str, torch.Tensor]:
    """This rank's slices of one layer, keyed "layers.<i>.<name inside the layer>"."""
    tensors = captured.tensors
    shard = {**attention_weights(layer.attention, tensors, heads, kv_heads),
             **mlp_weights(layer.mlp, tensors, columns)}
    for region in (layer.after_attention, layer.after_mlp, layer.attention.q_transform,
                   layer.attention.k_transform, layer.attention.v_transform, layer.mlp.activation):
        for name in region.inputs if region else ():
            if name in captured.fqns:
                key = relative_weight_name(captured.fqns[name])
                if key in shard and not torch.equal(shard[key], tensors[name]):
                    raise UntraceableModelError(f"two weights of layer {layer.index} are both "
                                                f"called {key!r} inside the layer")
                shard[key] = tensors[name]
    return {f"layers.{layer.index}.{k}": v for k, v in shard.items()}


def _range(sizes: tuple[int, ...], index: int) -> range:
    start = offsets(sizes)[index]
    return range(start, start + sizes[index])


def _prologue(graph: TransformerGraph, captured: CapturedModel, nodes: dict[str, fx.Node],
              needed: set[str]) -> tuple[FunctionCode, dict[str, torch.Tensor]]:
    """The prologue values this rank reads (dead code removed), and the weights they need."""
    region_nodes = needed_nodes(graph, nodes, needed)
    outputs = [n for n in graph.prologue.outputs if n in needed]
    names = {n: f'inputs["{n}"]' for n in graph.input_names}
    weights = {}
    used_inputs = {a.name for n in region_nodes for a in nodes[n].all_input_nodes}
    for name in graph.prologue.inputs:
        if name in captured.fqns and name in used_inputs:
            names[name] = f'weights["{captured.fqns[name]}"]'
            weights[captured.fqns[name]] = captured.tensors[name]
    body = emit_nodes([nodes[n] for n in region_nodes], names)
    result = "{" + ", ".join(f'"{n}": {names[n]}' for n in outputs) + "}"
    entries = set(layer_inputs(graph)) & needed
    doc = ("Masks and position tables for the whole sequence (every rank computes its own)"
           + (", and the embeddings of every token." if entries else "."))
    fn = FunctionCode("prologue", ("inputs", "weights"), tuple(body), (result,), doc, tuple(region_nodes))
    return fn, weights


def _epilogue(graph: TransformerGraph, captured: CapturedModel,
              code: LayerCode) -> tuple[FunctionCode, dict[str, torch.Tensor]]:
    last = graph.layers[-1]
    namer = LayerNamer(graph, last, captured.fqns)
    names, weights, prelude = {}, {}, []
    for name in graph.epilogue.inputs:
        if name in namer.roles:
            names[name] = namer.roles[name]
        elif name in captured.fqns:
            names[name] = f'weights["{captured.fqns[name]}"]'
            weights[captured.fqns[name]] = captured.tensors[name]
        elif name in graph.prologue.outputs:
            names[name] = f'static["{name}"]'
        else:
            raise UntraceableModelError("the head reads a value it cannot get", "", name)
    if last.mlp.down.bias:
        key = captured.fqns[last.mlp.down.bias]
        weights[key] = captured.tensors[last.mlp.down.bias]
        prelude.append(f'mlp_out = mlp_out + weights["{key}"]')
    params = tuple(dict.fromkeys(v for v in names.values() if not v.startswith(("weights[", "static["))))
    body = emit_nodes([code.nodes[n] for n in graph.epilogue.nodes], names)
    result = "{" + ", ".join(f'"{o}": {names[n]}' for o, n in zip(graph.output_names, graph.output_nodes)) + "}"
    fn = FunctionCode("epilogue", (*params, "static", "weights"), (*prelude, *body), (result,),
                      "The last connective block and the head, on rank 0 over the whole sequence.",
                      graph.epilogue.nodes)
    return fn, weights
