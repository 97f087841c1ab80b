"""The decode plan of a generation bundle: how one token a step runs, chosen per cluster.

    plan_generation(prefill, summary, decode_summary, cluster, max_len, model) -> Generation

A decode step moves one token, so its cost is memory (each weight read once: cost/decode.py) and
link latency (a few KB a message), not FLOPs and bandwidth as in the prefill. Three layouts are
priced on the decode cost table, at the mean context of a full request ((P + max_len) / 2):

    keep      the prefill's stages and head split, each stage all-reducing (attn:AR mlp:AR,
              the algorithm with the least link time: ring, star or direct); the cache stays
              where the prefill wrote it. Rank 0 embeds the token and broadcasts it (BCAST).
    single    rank 0 alone runs every layer; the cache moves to it once per request
    pipeline  whole layers on one device per stage, rank 0 first, the fastest devices filled
              to their memory first (a DP over devices and layer counts); the cache moves to
              each layer's device once per request

Each must fit: every device holds its prefill share, its decode weights (when the layout splits
layers differently) and its caches (cost/decode.py generation_memory). The chosen one has the
least predicted time for a request that fills the context: hand-off + (max_len - P - 1) x time
per token (the prefill gives the first token; decode_steps); ties go to keep, then single.
`Generation.notes` says why, in words.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from galaxy.compiler.capture.decode import LanguageModel
from galaxy.compiler.cost.decode import (CacheMove, build_decode_table, cache_layout, cache_moves,
                                         generation_memory, handoff_s)
from galaxy.compiler.cost.latency import stage_layer_s
from galaxy.compiler.cost.table import CostTable, build_cost_table
from galaxy.compiler.errors import GenerationError
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.generation import DecodeCandidate, Generation, keep_name, layout_words
from galaxy.compiler.ir.plan import Plan, StageSplit, validate_plan
from galaxy.compiler.ir.schedule import stage_schedule
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner.assemble import with_prediction
from galaxy.compiler.planner.explain import fmt_bytes, fmt_s
from galaxy.runtime.splits import split_sizes

log = logging.getLogger(__name__)

REDUCE_ALGORITHMS = ("ring", "star", "direct")


@dataclass(frozen=True)
class _Priced:
    layout: str
    plan: Plan
    handoff_s: float
    moves: tuple[CacheMove, ...]
    shortfall: dict[str, int]  # device -> bytes it lacks (empty: fits)

    @property
    def s_per_token(self) -> float:
        return self.plan.predicted_latency_s

    def request_s(self, steps: int) -> float:
        """The decode part of a request of `steps` steps: the cache hand-off, then the steps."""
        return self.handoff_s + steps * self.s_per_token


def plan_generation(prefill: Plan, summary: ModelSummary, decode_summary: ModelSummary, cluster: Cluster,
                    max_len: int, model: LanguageModel, layout: str | None = None) -> Generation:
    """The decode plan and predictions for `prefill` (see the module docstring); `layout` forces one
    of keep | single | pipeline (GenerationError if it is not possible or does not fit)."""
    length = summary.seq_len
    check_max_len(max_len, length, model)
    context = (length + max_len) // 2
    table = build_decode_table(decode_summary, cluster, context, prefill.wire_dtype)
    prefill_table = build_cost_table(summary, cluster, prefill.wire_dtype)
    spread = layout == "pipeline"  # asked for: every device takes layers, even where one could hold them all
    priced = [p for p in (_keep(prefill, decode_summary, table), _single(prefill, decode_summary, table),
                          _pipeline(prefill, summary, decode_summary, table, prefill_table, max_len, spread))
              if p is not None]
    priced = [_with_memory(p, prefill, summary, decode_summary, prefill_table, table, max_len) for p in priced]
    fitting = [p for p in priced if not p.shortfall]
    if not fitting:
        raise GenerationError(_no_fit(priced, max_len))
    order = {"keep": 0, "single": 1, "pipeline": 2}
    steps = decode_steps(max_len, length)
    best = min(fitting, key=lambda p: (round(p.request_s(steps), 12), order[p.layout]))
    chosen = best
    if layout is not None:
        chosen = next((p for p in fitting if p.layout == layout), None)
        if chosen is None:
            raise GenerationError(_not_possible(layout, priced, max_len))
    ttft = _time_to_first_token(prefill, prefill_table, table) + chosen.handoff_s
    log.info("decode: %s, predicted %.2f ms per token, time to first token %.1f ms", chosen.layout,
             chosen.s_per_token * 1e3, ttft * 1e3)
    memory = generation_memory(prefill, chosen.plan, prefill_table, summary, decode_summary, max_len,
                               keep=chosen.layout == "keep")
    return Generation(
        max_len=max_len, prefill_len=length, layout=chosen.layout, decode=chosen.plan, predicted_ttft_s=ttft,
        predicted_tbt_s=chosen.s_per_token, handoff_s=chosen.handoff_s, context_tokens=context,
        cache_bytes=tuple(memory[name].decode_cache for name in prefill.devices),
        cache_moves=chosen.moves,
        prefill_caches=tuple(cache_layout(prefill, r, summary) for r in range(prefill.world_size)),
        decode_caches=tuple(cache_layout(chosen.plan, r, summary) for r in range(prefill.world_size)),
        candidates=tuple(_candidate(p) for p in [chosen] + [p for p in priced if p is not chosen]),
        notes=tuple(explain(chosen, priced, best)),
        eos_token_id=model.eos_token_id, vocab_size=model.vocab_size)


def decode_steps(max_len: int, prefill_len: int) -> int:
    """The decode steps of a request that fills the context: the prefill gives the first new token."""
    return max(0, max_len - prefill_len - 1)


def check_max_len(max_len: int, prefill_len: int, model: LanguageModel) -> None:
    if max_len <= prefill_len:
        raise GenerationError(f"--max-len {max_len} leaves no room to generate: the prompt is padded to the "
                              f"compiled length {prefill_len} (--seq-len), so --max-len must exceed it")
    if model.max_positions and max_len > model.max_positions:
        raise GenerationError(f"--max-len {max_len} is beyond the model's {model.max_positions} positions; "
                              f"choose at most {model.max_positions}")


# --- the candidates ----------------------------------------------------------------------------

def _keep(prefill: Plan, summary: ModelSummary, table: CostTable) -> _Priced | None:
    """The prefill's stages and head split, all-reducing; None when a stage holds every head on every
    rank (sequence parallelism only: there is no head split to keep)."""
    if any(len(s.ranks) > 1 and not s.schedule.shards_weights for s in prefill.stages):
        return None
    best = None
    for algorithm in REDUCE_ALGORITHMS:
        stages = tuple(replace(
            stage, tokens_per_rank=(1,) * len(stage.ranks),
            schedule=stage_schedule(len(stage.ranks), shape="tensor", wire=prefill.wire_dtype, first=i == 0,
                                    last=i == len(prefill.stages) - 1, parallel=summary.parallel_blocks,
                                    broadcast=True, reduce_algorithm=algorithm))
            for i, stage in enumerate(prefill.stages))
        plan = _priced_plan(prefill, stages, summary, table, f"decode-keep ({algorithm} all-reduce)")
        if best is None or plan.predicted_latency_s < best.predicted_latency_s - 1e-12:
            best = plan
        if all(len(s.ranks) == 1 for s in prefill.stages):
            break
    return _Priced("keep", best, 0.0, (), {})


def _single(prefill: Plan, summary: ModelSummary, table: CostTable) -> _Priced | None:
    """Rank 0 alone; None when the prefill already runs on rank 0 alone (that is keep)."""
    if prefill.world_size == 1:
        return None
    stage = _whole_layers_stage(0, 0, summary.n_layers, summary, prefill.wire_dtype, first=True, last=True)
    return _Priced("single", _priced_plan(prefill, (stage,), summary, table, "decode-single"), 0.0, (), {})


def _pipeline(prefill: Plan, summary: ModelSummary, decode_summary: ModelSummary, table: CostTable,
              prefill_table: CostTable, max_len: int, spread: bool = False) -> _Priced | None:
    """Whole layers on one device per stage, rank 0 first; None when one device would take them all.
    `spread`: every device takes layers in proportion to its speed (the pipeline baseline) instead."""
    if prefill.world_size == 1 or summary.n_layers == 1:
        return None
    layer_s = {r: _whole_layer_s(table, table.index(prefill.devices[r]), decode_summary, prefill.wire_dtype)
               for r in range(prefill.world_size)}
    order = [0] + sorted((r for r in range(1, prefill.world_size)), key=lambda r: (layer_s[r], r))
    if spread:  # at least one layer each, on as many devices (fastest first) as there are layers
        order = order[:summary.n_layers]
        rest = split_sizes(summary.n_layers - len(order), [1 / layer_s[r] for r in order])
        counts = {r: 1 + extra for r, extra in zip(order, rest)}
    else:
        caps = {r: _layer_capacity(r, prefill, summary, decode_summary, prefill_table, max_len) for r in order}
        counts = _fill(order, caps, layer_s, summary.n_layers, _hop_s(table))
    if counts is None or sum(1 for c in counts.values() if c) < 2:
        return None
    stages, first = [], 0
    used = [r for r in order if counts.get(r)]
    for k, rank in enumerate(used):
        stages.append(_whole_layers_stage(rank, first, first + counts[rank], decode_summary, prefill.wire_dtype,
                                          first=k == 0, last=k == len(used) - 1))
        first += counts[rank]
    return _Priced("pipeline", _priced_plan(prefill, tuple(stages), decode_summary, table, "decode-pipeline"),
                   0.0, (), {})


def _fill(order: list[int], caps: dict[int, int], layer_s: dict[int, float], layers: int,
          hop_s: float) -> dict[int, int] | None:
    """Layers per device (in `order`, rank 0 first and never skipped) with the least step time:
    sum of layers x time per layer, plus a hop per stage; None when they do not fit."""
    inf = float("inf")
    best = {0: (0.0, {})}  # layers placed -> (time, counts)
    for i, rank in enumerate(order):
        nxt: dict[int, tuple[float, dict[int, int]]] = {} if i == 0 else dict(best)  # skip (not rank 0)
        for placed, (time, counts) in best.items():
            for k in range(1, min(caps[rank], layers - placed) + 1):
                t = time + k * layer_s[rank] + (hop_s if i else 0.0)
                if t < nxt.get(placed + k, (inf, None))[0]:
                    nxt[placed + k] = (t, {**counts, rank: k})
        best = nxt
    return best[layers][1] if layers in best else None


def _whole_layers_stage(rank: int, first_layer: int, end_layer: int, summary: ModelSummary, wire: str, *,
                       first: bool, last: bool) -> StageSplit:
    """Layers [first_layer, end_layer) whole on `rank`."""
    return StageSplit(ranks=(rank,), first_layer=first_layer, end_layer=end_layer, heads_per_rank=(summary.heads,),
                      kv_heads_per_rank=(summary.kv_heads,), columns_per_rank=(summary.intermediate,),
                      tokens_per_rank=(1,), schedule=stage_schedule(1, wire=wire, first=first, last=last,
                                                                    parallel=summary.parallel_blocks))


def _priced_plan(prefill: Plan, stages: tuple[StageSplit, ...], summary: ModelSummary, table: CostTable,
                 solver: str) -> Plan:
    """A decode plan over the prefill's devices (ranks not in `stages` sit out), with its prediction."""
    plan = Plan(model=summary.name, cluster=prefill.cluster, devices=prefill.devices, stages=stages, solver=solver)
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, 1, summary.n_layers, every_rank=False)
    return with_prediction(plan, table)


def _whole_layer_s(table: CostTable, device: int, summary: ModelSummary, wire: str) -> float:
    """A decode step's seconds for one whole layer on `device`, as `predict` prices it."""
    return stage_layer_s(table, _whole_layers_stage(device, 0, 1, summary, wire, first=True, last=True), (device,))


def _hop_s(table: CostTable) -> float:
    """A pipeline hop for the DP's estimate: the worst latency and the hand-off's bytes at the worst rate."""
    links = [(a, b) for i, row in enumerate(table.alpha_s) for j, a in enumerate(row) if i != j
             for b in (table.beta_s_per_byte[i][j],)]
    return max((a + b * table.entry_tensors * table.token_wire_bytes for a, b in links), default=0.0)


def _layer_capacity(rank: int, prefill: Plan, summary: ModelSummary, decode_summary: ModelSummary,
                    prefill_table: CostTable, max_len: int) -> int:
    """How many whole layers (weights and cache) `rank` can decode beside what the prefill leaves on it."""
    single = _whole_layers_stage(rank, 0, summary.n_layers, summary, prefill.wire_dtype, first=True, last=True)
    one_layer = replace(single, end_layer=1)
    probe = replace(prefill, stages=(one_layer,))
    base = generation_memory(prefill, replace(probe, stages=()), prefill_table, summary, decode_summary, max_len,
                             keep=False)[prefill.devices[rank]].total
    per_layer = generation_memory(prefill, probe, prefill_table, summary, decode_summary, max_len,
                                  keep=False)[prefill.devices[rank]].total - base
    free = prefill_table.mem_bytes[prefill_table.index(prefill.devices[rank])] - base
    return max(0, int(free // per_layer)) if per_layer > 0 else summary.n_layers


def _with_memory(p: _Priced, prefill: Plan, summary: ModelSummary, decode_summary: ModelSummary,
                 prefill_table: CostTable, table: CostTable, max_len: int) -> _Priced:
    """`p` with its cache hand-off priced and what each device would lack."""
    keep = p.layout == "keep"
    moves = () if keep else tuple(cache_moves(prefill, p.plan, summary.kv_heads))
    handoff = handoff_s(list(moves), prefill.devices, table, summary, summary.seq_len)
    memory = generation_memory(prefill, p.plan, prefill_table, summary, decode_summary, max_len, keep=keep)
    limits = dict(zip(prefill_table.devices, prefill_table.mem_bytes))
    shortfall = {name: parts.total - limits[name] for name, parts in sorted(memory.items())
                 if parts.total > limits[name]}
    return replace(p, handoff_s=handoff, moves=moves, shortfall=shortfall)


def _time_to_first_token(prefill: Plan, prefill_table: CostTable, table: CostTable) -> float:
    """The prefill's predicted latency with its head over the whole prompt replaced by the head over
    the last prompt token (what generation runs)."""
    head = table.index(prefill.devices[0])
    return (prefill.predicted_latency_s - prefill_table.epilogue_s[head] + table.epilogue_s[head]
            + table.overhead_s(head))


def _candidate(p: _Priced) -> DecodeCandidate:
    used = tuple(p.plan.devices[r] for s in p.plan.stages for r in s.ranks)
    lacks = ", ".join(f"{name} lacks {fmt_bytes(b)}" for name, b in p.shortfall.items())
    return DecodeCandidate(p.layout, used, p.s_per_token, p.handoff_s, not p.shortfall,
                           str(p.plan.stages[0].schedule), lacks)


def _not_possible(layout: str, priced: list[_Priced], max_len: int) -> str:
    found = next((p for p in priced if p.layout == layout), None)
    if found is None:
        why = {"keep": "the prefill holds every head on every rank (sequence parallelism only): no head split",
               "single": "the prefill runs on one device already (that is keep)",
               "pipeline": "one device holds every layer (a pipeline would have one stage)"}[layout]
        return f"decode layout {layout!r} is not possible here: {why}"
    lacks = ", ".join(f"{n} lacks {fmt_bytes(b)}" for n, b in found.shortfall.items())
    return f"decode layout {layout!r} does not fit a cache of {max_len} tokens: {lacks}"


def _no_fit(priced: list[_Priced], max_len: int) -> str:
    parts = "; ".join(f"{p.layout}: " + ", ".join(f"{n} lacks {fmt_bytes(b)}" for n, b in p.shortfall.items())
                      for p in priced)
    return (f"no decode layout fits a key/value cache of {max_len} tokens beside the weights ({parts}); "
            "compile with a smaller --max-len, or for a cluster with more memory")


# --- why, in words -----------------------------------------------------------------------------

def _split(plan: Plan) -> tuple[float, float, int]:
    """(compute seconds, link seconds, collectives) of one step of `plan`."""
    compute = link = 0.0
    messages = 0
    for b in plan.predicted_blocks:
        runs = len(plan.stages[b.stage].layers) if b.per_layer else 1
        compute += max(b.compute_s_per_rank, default=0.0) * runs
        link += (b.comm_s - b.hidden_s) * runs
        messages += len(b.actions) * runs
    return compute, link, messages


def _devices(p: _Priced) -> str:
    names = [p.plan.devices[r] for s in p.plan.stages for r in s.ranks]
    return names[0] if len(names) == 1 else f"{len(names)} devices ({', '.join(names)})"


def explain(chosen: _Priced, priced: list[_Priced], best: _Priced | None = None) -> list[str]:
    """Why the decode layout won: its time per token and what made up the others'. `best`: the
    planner's own choice when `chosen` was forced (galaxy-compile --decode)."""
    compute, link, messages = _split(chosen.plan)
    notes = [f"decode: {layout_words(chosen.layout, chosen.plan)} on {_devices(chosen)}, predicted "
             f"{fmt_s(chosen.s_per_token)} per token ({fmt_s(compute)} compute, {fmt_s(link)} link time over "
             f"{messages} collectives a step)" + (f"; moving the cache costs {fmt_s(chosen.handoff_s)} once"
                                                 if chosen.handoff_s else "")]
    by_layout = {p.layout: p for p in priced}
    for p in priced:
        if p is chosen:
            continue
        if p.shortfall:
            lacks = ", ".join(f"{n} lacks {fmt_bytes(b)}" for n, b in p.shortfall.items())
            notes.append(f"not {p.layout} ({_devices(p)}): its weights and cache do not fit ({lacks})")
            continue
        c, l, m = _split(p.plan)
        notes.append(f"not {p.layout} ({_devices(p)}): {fmt_s(p.s_per_token)} per token ({fmt_s(c)} compute, "
                     f"{fmt_s(l)} link time over {m} collectives)"
                     + (f", {fmt_s(p.handoff_s)} to move the cache" if p.handoff_s else ""))
    if best is not None and best is not chosen:
        notes.append(f"why {chosen.layout}: asked for (--decode {chosen.layout}); the planner would choose "
                     f"{best.layout} ({fmt_s(best.s_per_token)} per token against {fmt_s(chosen.s_per_token)})")
    else:
        notes.append(_why(chosen, by_layout))
    return notes


def _why(chosen: _Priced, by_layout: dict[str, _Priced]) -> str:
    keep, single = by_layout.get("keep"), by_layout.get("single")
    if chosen.layout == "single":
        if keep is None:
            return ("why one device: the prefill holds every head on every rank (sequence parallelism only), "
                    "so there is no head split to keep, and one device beats a pipeline of whole layers")
        c, l, m = _split(keep.plan)
        c_single = _split(chosen.plan)[0]
        if c >= c_single:
            return (f"why one device: tensor parallelism would not even cut a step's compute ({fmt_s(c)} against "
                    f"{fmt_s(c_single)}: the slowest device's share and each block's fixed cost bound it) and "
                    f"adds {fmt_s(l)} of link time for its {m} collectives a step")
        return (f"why one device: tensor parallelism would cut a step's compute from {fmt_s(c_single)} to "
                f"{fmt_s(c)} but add {fmt_s(l)} of link time for its {m} collectives a step (one token makes "
                "each a few KB, so each costs the link latency), more than it saves")
    if chosen.layout == "keep":
        if single is None:
            return "why: the prefill runs on one device; decode keeps it"
        if single.shortfall:
            pipeline = by_layout.get("pipeline")
            if pipeline is None:  # _pipeline found no split of whole layers that fits
                versus = ("; no pipeline of whole layers fits beside the prefill's shares (each device would "
                          "hold its decode layers' weights as well)")
            elif not pipeline.shortfall:
                versus = (f": {fmt_s(chosen.s_per_token)} per token against {fmt_s(pipeline.s_per_token)} for a "
                          "pipeline of whole layers")
            else:
                versus = ""
            return (f"why {keep_name(chosen.plan)}: the model and its cache do not fit on {_devices(single)} alone, and "
                    f"keeping the prefill's head split leaves the cache where it is{versus}")
        c_single, _, _ = _split(single.plan)
        c, l, _ = _split(chosen.plan)
        return (f"why {keep_name(chosen.plan)}: splitting each step's weight reads over {_devices(chosen)} cuts its compute "
                f"from {fmt_s(c_single)} on {_devices(single)} alone to {fmt_s(c)}, and its all-reduces cost "
                f"{fmt_s(l)}: {fmt_s(chosen.s_per_token)} per token against {fmt_s(single.s_per_token)} "
                f"(plus {fmt_s(single.handoff_s)} once to move the cache)")
    hops = len(chosen.plan.stages)
    reasons = []
    if single is not None and single.shortfall:
        reasons.append(f"the model and its cache do not fit on {_devices(single)} alone")
    if keep is None:
        reasons.append("the prefill leaves no head split to keep")
    elif keep.shortfall:
        reasons.append("tensor parallelism over the prefill's split does not fit")
    else:
        reasons.append(f"its {hops} hops a step cost less than tensor parallelism's all-reduces "
                       f"({fmt_s(_split(keep.plan)[1])})")
    return "why a pipeline: " + "; ".join(reasons)
