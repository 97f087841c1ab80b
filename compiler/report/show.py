"""`galaxy-plan show`: a plan as text. Shares per device, memory against each device's limit,
predicted time per block, and the planner's notes (why each device is in or out).

A generation bundle (galaxy-compile --max-len) shows its prefill plan, whose memory column then
counts everything a device holds to generate (the key/value cache, and decode weights when the
decode layout splits layers another way: cost/decode.py generation_memory), then its decode plan:
the predicted time to first token and per token, each decode stage, the layouts the planner
priced and why it chose one."""
from __future__ import annotations

from galaxy.compiler.cost.decode import GenerationMemory, generation_memory
from galaxy.compiler.cost.latency import block_s
from galaxy.compiler.cost.memory import plan_memory_bytes
from galaxy.compiler.ir.generation import Generation, layout_words
from galaxy.compiler.ir.plan import BlockTime, Plan, StageSplit
from galaxy.compiler.report.document import PlanDocument
from galaxy.compiler.report.text import gib, ms, ms_decimals, table


def show_plan(doc: PlanDocument) -> str:
    plan = doc.plan
    lines = [f"plan for {plan.model} on {plan.cluster}: {plan.solver}, {plan.objective} objective, "
             f"wire {plan.wire_dtype}, {len(plan.stages)} stage{'s' if len(plan.stages) > 1 else ''}, "
             f"{plan.world_size} of {len(doc.cluster.devices) if doc.cluster else '?'} devices",
             f"predicted latency {ms(plan.predicted_latency_s, ms_decimals(plan.predicted_latency_s))} ms "
             "per forward", *throughput_lines(plan), *wire_lines(doc), ""]
    if doc.generation is not None:
        lines[1:2] = [lines[1].replace("per forward", "for the prefill (a whole prompt)"),
                      *generation_summary_lines(doc.generation)]
    lines += share_lines(doc)
    lines += [""] + block_lines(plan)
    if plan.notes:
        lines += ["", "why (planner notes):", *(f"  {n}" for n in plan.notes)]
    if doc.generation is not None:
        lines += [""] + decode_lines(doc)
    return "\n".join(lines)


def generation_summary_lines(g: Generation) -> list[str]:
    """The predictions of a generation bundle, in two lines."""
    return [f"generation: prompts of up to {g.prefill_len} tokens, a key/value cache of {g.max_len} tokens; "
            f"predicted time to first token {ms(g.predicted_ttft_s, ms_decimals(g.predicted_ttft_s))} ms, "
            f"time per token {ms(g.predicted_tbt_s, ms_decimals(g.predicted_tbt_s))} ms "
            f"(at a context of {g.context_tokens} tokens)",
            f"decode: {g.layout}, {layout_words(g.layout, g.decode)}"
            + (f"; moving the prompt's cache costs {ms(g.handoff_s, ms_decimals(g.handoff_s))} ms"
               if g.handoff_s else "")]


def generation_memory_by_device(doc: PlanDocument) -> dict[str, GenerationMemory]:
    """What each device holds to generate ({} when the document lacks the summaries to say)."""
    g, costs = doc.generation, doc.cost_table()
    if g is None or costs is None or doc.decode_summary is None:
        return {}
    return generation_memory(doc.plan, g.decode, costs, doc.summary, doc.decode_summary, g.max_len,
                             keep=g.layout == "keep")


def decode_lines(doc: PlanDocument) -> list[str]:
    """The decode plan: its stages, each rank's cache and memory, the layouts priced and why."""
    g = doc.generation
    decode = g.decode
    memory = generation_memory_by_device(doc)
    limit = {d.name: d.mem_bytes for d in doc.cluster.devices} if doc.cluster else {}
    lines = [f"decode plan (one token a step against the key/value cache): {g.layout}, "
             f"{len(decode.stages)} stage{'s' if len(decode.stages) > 1 else ''}, predicted "
             f"{ms(g.predicted_tbt_s, ms_decimals(g.predicted_tbt_s))} ms per token"]
    for i, stage in enumerate(decode.stages):
        totals = _totals(stage)
        lines.append(f"decode stage {i}: layers {stage.first_layer}-{stage.end_layer - 1} ({len(stage.layers)}), "
                     f"{len(stage.ranks)} rank{'s' if len(stage.ranks) > 1 else ''}, schedule: {stage.schedule}")
        rows = []
        for j, rank in enumerate(stage.ranks):
            name = decode.devices[rank]
            parts = memory.get(name)
            rows.append([str(rank), name, f"{stage.kv_heads_per_rank[j]}/{totals[1]}",
                         f"{stage.columns_per_rank[j]}/{totals[2]}",
                         _size(g.cache_bytes[rank]) if rank < len(g.cache_bytes) else "?",
                         *_memory_cells(parts.total if parts else None, limit.get(name))])
        lines += table(["rank", "device", "kv heads", "columns", "kv cache", "memory", "limit", "used"], rows)
    idle = [decode.devices[r] for r in range(decode.world_size) if all(r not in s.ranks for s in decode.stages)]
    if idle:
        lines.append("sitting decode out (prefill only): " + ", ".join(idle))
    if g.candidates:
        rows = [[c.layout, ", ".join(c.devices), ms(c.s_per_token, ms_decimals(c.s_per_token)),
                 ms(c.handoff_s, ms_decimals(c.handoff_s)) if c.handoff_s else "-",
                 "yes" if c.fits else f"no: {c.why_not}", "chosen" if c.layout == g.layout else ""]
                for c in g.candidates]
        lines += ["", "decode layouts priced (ms):"]
        lines += table(["layout", "devices", "per token", "cache hand-off", "fits", ""], rows)
    lines += [""] + block_lines(decode, "per token")
    if g.notes:
        lines += ["", "why this decode layout:", *(f"  {n}" for n in g.notes)]
    return lines


def throughput_lines(plan: Plan) -> list[str]:
    """Throughput plans: requests per second when requests stream through the stages."""
    per_request = plan.predicted_s_per_request
    if per_request is None:
        return []
    return [f"predicted throughput {1 / per_request:.2f} requests/s "
            f"({ms(per_request, ms_decimals(per_request))} ms per request, requests streaming through "
            f"{len(plan.stages)} stage{'s' if len(plan.stages) > 1 else ''})"]


def wire_lines(doc: PlanDocument) -> list[str]:
    """Plans that send activations in less than float32: the error that costs, measured at compile time."""
    if doc.plan.wire_dtype == "float32":
        return []
    if not doc.wire_error:
        return [f"wire {doc.plan.wire_dtype}: expected error unknown (the plan was not compiled with its model)"]
    errors = ", ".join(f"{name} {error:.2g}" for name, error in sorted(doc.wire_error.items()))
    return [f"wire {doc.plan.wire_dtype}: expected max abs error {errors} (one single-process run rounding "
            "activations where this plan's actions send them)"]


def share_lines(doc: PlanDocument) -> list[str]:
    plan, costs = doc.plan, doc.cost_table()
    memory = plan_memory_bytes(plan, costs) if costs else {}
    generating = generation_memory_by_device(doc)
    if generating:  # a generation bundle: the cache (and any decode weights) besides the prefill's share
        memory = {name: parts.total for name, parts in generating.items()}
    limit = {d.name: d.mem_bytes for d in doc.cluster.devices} if doc.cluster else {}
    lines = []
    for i, stage in enumerate(plan.stages):
        totals = _totals(stage)
        lines.append(f"stage {i}: layers {stage.first_layer}-{stage.end_layer - 1} ({len(stage.layers)}), "
                     f"{len(stage.ranks)} rank{'s' if len(stage.ranks) > 1 else ''}, {stage.parallelism}")
        lines.append(f"  schedule: {stage.schedule}")
        rows = []
        for j, rank in enumerate(stage.ranks):
            name = plan.devices[rank]
            rows.append([str(rank), name, f"{stage.heads_per_rank[j]}/{totals[0]}",
                         f"{stage.kv_heads_per_rank[j]}/{totals[1]}", f"{stage.columns_per_rank[j]}/{totals[2]}",
                         f"{stage.tokens_per_rank[j]}/{totals[3]}", *_memory_cells(memory.get(name), limit.get(name))])
        lines += table(["rank", "device", "heads", "kv heads", "columns", "tokens", "memory", "limit", "used"], rows)
    out = [d for d in (doc.cluster.devices if doc.cluster else ()) if d.name not in plan.devices]
    if out:
        lines.append("not used: " + ", ".join(f"{d.name} ({gib(d.mem_bytes)})" for d in out))
    if generating:
        caches = ", ".join(f"{name} {_size(p.prefill_cache + p.decode_cache)}" for name, p in generating.items()
                           if p.prefill_cache + p.decode_cache)
        lines.append(f"memory includes the key/value cache of {doc.generation.max_len} tokens ({caches})"
                     + (" and the decode layout's own weights" if any(p.decode_weights for p in generating.values())
                        else ""))
    if not costs:
        lines.append("memory: unknown (a bare plan file has no model summary and cluster; "
                     "galaxy-compile --save-plan and bundles keep them)")
    return lines


def _size(n: int) -> str:
    """Bytes in KiB below a MiB (a small model's cache), else as gib() prints them."""
    return f"{n / 2**10:.1f} KiB" if n < 2**20 else gib(n)


def _totals(stage: StageSplit) -> tuple[int, int, int, int]:
    """The model's heads, KV heads, columns and tokens (ranks that hold all of them list all)."""
    weights = sum if stage.schedule.shards_weights else max
    tokens = max if stage.schedule.layout == "whole" else sum
    return (weights(stage.heads_per_rank), weights(stage.kv_heads_per_rank), weights(stage.columns_per_rank),
            tokens(stage.tokens_per_rank))


def _memory_cells(used: int | None, limit: int | None) -> list[str]:
    return [gib(used) if used is not None else "?", gib(limit) if limit is not None else "?",
            f"{used / limit:.0%}" if used is not None and limit else "?"]


def runs_per_forward(plan: Plan, block: BlockTime) -> int:
    """How many times a block runs per forward."""
    return len(plan.stages[block.stage].layers) if block.per_layer else 1


def block_lines(plan: Plan, per: str = "per forward") -> list[str]:
    """Predicted time per block: each rank's compute, link time, hidden part, per forward (or `per`)."""
    if not plan.predicted_blocks:
        return ["predicted time per block: none (the plan carries no prediction)"]
    dec = ms_decimals(plan.predicted_latency_s)
    total = sum(block_s(b) * runs_per_forward(plan, b) for b in plan.predicted_blocks)
    ranks = list(range(plan.world_size))
    rows = []
    for b in plan.predicted_blocks:
        per_rank = dict(zip(plan.stages[b.stage].ranks, b.compute_s_per_rank))  # epilogue: stage 0's ranks
        forward = block_s(b) * runs_per_forward(plan, b)
        rows.append([str(b.stage), b.block, f"x{runs_per_forward(plan, b)}",
                     *(ms(per_rank[r], dec) if r in per_rank else "-" for r in ranks),
                     ms(max(b.comm_cpu_s_per_rank, default=0.0), dec), ms(b.comm_s, dec), ms(b.hidden_s, dec),
                     ms(block_s(b), dec), ms(forward, dec), f"{forward / total:.0%}" if total else "-"])
    rows.append(["", "total", "", *("" for _ in ranks), "", "", "", "", ms(total, dec), "100%"])
    header = ["stage", "block", "runs", *(f"rank {r}" for r in ranks), "comm cpu", "link", "hidden", "block",
              per, "share"]
    return (["predicted time per block in ms (rank columns: compute, including the comm cpu of moving bytes;",
             f"block = slowest rank + link - hidden; {per} = block x runs):"]
            + table(header, rows))

