"""Lowering: TransformerGraph + Plan -> one RankProgram (code pieces + weights) per rank."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import torch
import torch.fx as fx

from galaxy.compiler.capture.trace import CapturedModel
from galaxy.compiler.errors import PlanFileError, UntraceableModelError
from galaxy.compiler.ir.graph import Layer, TransformerGraph
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.program import AttentionCode, FunctionCode, MLPCode, RankProgram, StagePosition
from galaxy.compiler.ir.schedule import gather_can_overlap
from galaxy.compiler.lower.layer_code import LayerCode
from galaxy.compiler.lower.regions import LayerNamer, check_layers_match, relative_weight_name
from galaxy.compiler.lower.weights import attention_weights, fuse_parallel, mlp_weights
from galaxy.compiler.lower.emit import dict_literal, emit
from galaxy.compiler.lower.fold import evaluate, input_free
from galaxy.compiler.lower.roles import STATIC_PREFIX, graph_roles, static_roles, stream_shape
from galaxy.compiler.passes.prologue import epilogue_statics, layer_inputs, layer_statics, needed_nodes
from galaxy.runtime.splits import offsets

log = logging.getLogger(__name__)

PHASES = ("forward", "prefill", "decode")
# What attention does with the key/value cache in each phase (ir/program.py AttentionCode.cache).
CACHE_BY_PHASE = {"forward": None, "prefill": "prompt", "decode": "step"}


@dataclass(frozen=True)
class LoweredRank:
    program: RankProgram
    weights: dict[str, torch.Tensor]


def plan_id(plan: Plan) -> str:
    return hashlib.sha256(plan.dumps().encode()).hexdigest()[:8]


def lower(graph: TransformerGraph, captured: CapturedModel, plan: Plan, source: str,
          phase: str = "forward", max_len: int = 0) -> list[LoweredRank]:
    """One program per rank of `plan` (a rank in no stage of a decode plan gets none).

    `phase` is "forward" (one pass over the sequence), "prefill" (the same, each rank keeping
    its keys and values in a cache of `max_len` tokens for the decode steps) or "decode" (one
    token against that cache; `graph` is the one-token capture: capture/decode.py)."""
    if phase not in PHASES:
        raise ValueError(f"phase {phase!r} is not one of {', '.join(PHASES)}")
    nodes = {n.name: n for n in captured.graph_module.graph.nodes}
    namer = LayerNamer(graph, graph.layers[0], captured.fqns)
    roles = static_roles(graph, nodes, {n: namer.roles[n] for n in namer.entries})
    layer_code = LayerCode(graph, captured, nodes, roles)
    check_layers_match(graph, layer_code.functions)
    shared = {f.name: f for f in layer_code.functions(layer_code.first)}
    folded = _folded_statics(graph, captured, nodes, roles)
    ranks = sorted(r for stage in plan.stages for r in stage.ranks)
    return [_lower_rank(rank, graph, captured, plan, layer_code, shared, folded, source, phase, max_len)
            for rank in ranks]


def _folded_statics(graph: TransformerGraph, captured: CapturedModel, nodes: dict[str, fx.Node],
                    roles: dict[str, str]) -> dict[str, torch.Tensor]:
    """Prologue values the layers or the head read that depend on no input, computed now (fold.py)."""
    candidates = [n for n in roles if n not in layer_inputs(graph)]
    constant = input_free(candidates, nodes, graph.input_names)
    return evaluate(constant, nodes, captured.tensors)


def _lower_rank(rank: int, graph: TransformerGraph, captured: CapturedModel, plan: Plan, code: LayerCode,
                fns: dict[str, FunctionCode], folded: dict[str, torch.Tensor], source: str, phase: str,
                max_len: int) -> LoweredRank:
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
    fused_block = code.first.parallel and stage.schedule.shards_weights
    fuse_inputs = fused_block and att.input == mlp.input
    gather = stage.schedule.block("par").find("AG") if code.first.parallel else None
    if gather is not None and gather.tiles > 0 and not gather_can_overlap(1 if att.input == mlp.input else 2):
        raise PlanFileError(f"stage {stage_index}: {gather} overlaps the all-gather of parallel blocks whose "
                            "attention and MLP read different inputs (two GEMMs follow it, so it cannot fuse "
                            "with one); plan them with tiles 0")
    for layer in graph.layers[stage.first_layer:stage.end_layer]:
        weights.update(_layer_weights(layer, captured, heads, kv_heads, columns, fused_block, fuse_inputs))

    needed = set(layer_statics(graph))
    if phase == "decode":  # a decode step attends to its cache up to its own position: no mask
        needed.discard(att.mask)
    if rank == 0 or stage.schedule.enter.op == "REP":  # the ranks that compute the layer inputs
        needed |= set(layer_inputs(graph))
    if rank == 0:
        needed |= set(epilogue_statics(graph))
    prologue, prologue_weights = _prologue(graph, captured, code, needed, folded)
    weights.update(prologue_weights)
    epilogue = None
    if rank == 0:
        epilogue, epilogue_weights = _epilogue(graph, captured, code)
        weights.update(epilogue_weights)

    d = att.head_dim
    transforms = code.transforms(code.first)
    attention = AttentionCode(
        heads=len(heads), kv_heads=len(kv_heads), head_dim=d, first_head=heads.start,
        total_heads=att.heads, split_sizes=(len(heads) * d, len(kv_heads) * d, len(kv_heads) * d),
        has_bias=any(p.bias for p in (att.q, att.k, att.v)),
        q_transform=transforms["q"].name if "q" in transforms else None,
        k_transform=transforms["k"].name if "k" in transforms else None,
        v_transform=transforms["v"].name if "v" in transforms else None,
        mask=None if phase == "decode" else code.static_roles.get(att.mask),
        is_causal=att.is_causal and phase != "decode", scale=att.scale,
        sources=(att.q.output, att.k.output, att.v.output, att.sdpa, att.out.output),
        prepares=tuple(fns[f"{kind}_prepare"] for kind in "qkv" if f"{kind}_prepare" in fns),
        seq_major=att.seq_major, cache=CACHE_BY_PHASE[phase])
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
        query_row_statics=_query_row_statics(graph, code) if stage.schedule.block("attn").shape == "sequence" else {},
        attention=attention, mlp=mlp_code,
        transforms=tuple({f.name: f for f in transforms.values()}.values()),
        prologue=prologue, after_attention=fns.get("after_attention"),
        after_mlp=fns.get("after_mlp") or fns.get("after_block"),
        epilogue=epilogue, layer_entries=tuple(code.static_roles[n] for n in namer.entries),
        layer_entry_roles=tuple(namer.roles[n] for n in namer.entries),
        entry_shapes=tuple(shape_of(n) for n in namer.entries),
        after_attention_outputs=tuple(namer.roles[o] for o in code.first.after_attention.outputs),
        block_inputs=namer.block_inputs if code.first.parallel else (),
        mlp_input=namer.roles[code.first.mlp.input],
        epilogue_entries=epilogue_entries,
        epilogue_entry_shapes=tuple(shape_of(n) for n in graph.epilogue.inputs if n in last_namer.roles),
        output_names=graph.output_names,
        weight_file=f"weights/rank_{rank}.safetensors",
        phase=phase, max_len=max_len,
    )
    return LoweredRank(program, weights)


def _query_row_statics(graph: TransformerGraph, code: LayerCode) -> dict[str, int]:
    """Prologue values attention reads per query position (masks, rotary tables), each with the dim
    of its query rows: a rank that runs only its own queries keeps those rows. Masks and tables
    of [batch, heads, seq, dim] transforms have them at -2, those of [batch, seq, heads, dim]
    transforms (GPT-J) at 1."""
    att = code.first.attention
    wanted = {att.mask: -2} if att.mask else {}
    for kind in "qkv":
        region = getattr(att, f"{kind}_transform")
        for name in region.inputs[1:] if region.nodes else ():
            if name in graph.prologue.outputs:
                wanted.setdefault(name, 1 if kind in att.seq_major else -2)
    rows = {}
    for name, dim in wanted.items():
        shape = tuple(code.nodes[name].meta["val"].shape)
        if len(shape) >= 2 and shape[dim] == graph.seq_len:
            rows[code.static_roles[name]] = dim
        elif len(shape) >= 2 and shape[dim] != 1:  # scalars, vectors and broadcast rows stay whole
            raise UntraceableModelError(f"sequence parallelism only needs the query rows of {name} "
                                        f"(shape {list(shape)}) along dim {dim}; plan it with tensor "
                                        "parallelism instead", "", name)
    return rows


def _layer_weights(layer: Layer, captured: CapturedModel, heads: range, kv_heads: range, columns: range,
                   fused_block: bool, fuse_inputs: bool) -> dict[str, torch.Tensor]:
    """This rank's slices of one layer, keyed "layers.<i>.<name inside the layer>" (a parallel
    layer split by heads and columns: one block's weights, weights.fuse_parallel)."""
    tensors = captured.tensors
    shard = {**attention_weights(layer.attention, tensors, heads, kv_heads),
             **mlp_weights(layer.mlp, tensors, columns)}
    if fused_block:
        shard = fuse_parallel(shard, fuse_inputs)
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


def _prologue(graph: TransformerGraph, captured: CapturedModel, code: LayerCode, needed: set[str],
              folded: dict[str, torch.Tensor]) -> tuple[FunctionCode, dict[str, torch.Tensor]]:
    """The prologue values this rank reads: those folded at compile time come from its weight file,
    the rest is computed from the inputs (dead code removed), with the weights that takes."""
    roles, nodes = code.static_roles, code.nodes
    outputs = [n for n in graph.prologue.outputs if n in needed]
    computed = [n for n in outputs if n not in folded]
    region_nodes = needed_nodes(graph, nodes, set(computed))
    names = {n: f'inputs["{n}"]' for n in graph.input_names}
    weights = {STATIC_PREFIX + roles[n]: folded[n] for n in outputs if n in folded}
    used_inputs = {a.name for n in region_nodes for a in nodes[n].all_input_nodes}
    for name in graph.prologue.inputs:
        if name in captured.fqns and name in used_inputs:
            names[name] = f'weights["{captured.fqns[name]}"]'
            weights[captured.fqns[name]] = captured.tensors[name]
    hints = graph_roles([nodes[n] for n in region_nodes], captured.fqns, stream_shape(graph))
    body = emit([nodes[n] for n in region_nodes], names, computed, {n: roles[n] for n in computed}, hints)
    values = {n: f'weights["{STATIC_PREFIX}{roles[n]}"]' if n in folded else body.values[n] for n in outputs}
    ordered = [n for n in outputs if n in folded] + [n for n in computed]
    result = dict_literal([(roles[n], values[n]) for n in ordered])
    fn = FunctionCode("prologue", ("inputs", "weights"), body.lines, (result,),
                      _prologue_doc(graph, roles, [n for n in outputs if n in folded], computed), body.sources)
    return fn, weights


def _prologue_doc(graph: TransformerGraph, roles: dict[str, str], folded: list[str], computed: list[str]) -> str:
    """What the prologue returns, in words."""
    entries = [roles[n] for n in computed if n in layer_inputs(graph)]
    others = [roles[n] for n in computed if n not in layer_inputs(graph)]
    parts = [f"{_listing(entries)}: the embeddings of every token"] if entries else []
    parts += [f"{_listing(others)}, from the inputs"] if others else []
    parts += [f"{_listing([roles[n] for n in folded])}, computed at compile time"] if folded else []
    return f"What the layers read: {'; '.join(parts)}." if parts else "Nothing: the layers read no prologue value."


def _listing(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


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
        elif name in code.static_roles:
            names[name] = f'static["{code.static_roles[name]}"]'
        else:
            raise UntraceableModelError("the head reads a value it cannot get", "", name)
    # The output biases wait for the reduction: the MLP's (a parallel layer's block output: both).
    summed = namer.roles[last.block_output] if last.parallel else "mlp_out"
    biases = [b for b in ((last.attention.out.bias,) if last.parallel else ()) + (last.mlp.down.bias,) if b]
    for bias in biases:
        weights[captured.fqns[bias]] = captured.tensors[bias]
    if biases:
        added = " + ".join(f'weights["{captured.fqns[b]}"]' for b in biases)
        prelude.append(f"{summed} = {summed} + {added}")
    params = tuple(dict.fromkeys(v for v in names.values() if not v.startswith(("weights[", "static["))))
    nodes = [code.nodes[n] for n in graph.epilogue.nodes]
    roles = {n: o for o, n in zip(graph.output_names, graph.output_nodes) if o.isidentifier()}
    body = emit(nodes, names, graph.output_nodes, roles, graph_roles(nodes, captured.fqns, stream_shape(graph)))
    result = dict_literal([(o, body.values[n]) for o, n in zip(graph.output_names, graph.output_nodes)])
    fn = FunctionCode("epilogue", (*params, "static", "weights"), (*prelude, *body.lines), (result,),
                      "The last connective block and the head, on rank 0 over the whole sequence.", body.sources)
    return fn, weights
