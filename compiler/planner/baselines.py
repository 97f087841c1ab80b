"""Baselines the benchmarks run next to the ILP. Each returns a Plan, predicted with `predict`.

- single:        the fastest device that holds the whole model, alone
- even:          every device, equal heads (KV groups), columns and tokens, hybrid schedule
- megatron:      Megatron-style tensor parallelism: every device, equal heads and columns, every
                 token on every rank, an all-reduce after attention and after the MLP
- proportional:  every device, heads/columns/tokens in proportion to flops_per_s
- sequence:      sequence parallelism only: the fastest k devices that hold the whole model
                 (k by predicted latency), tokens in inverse proportion to each one's time
                 per token; every device keeps every weight; keys and values gathered (KVAG, in
                 the best tile count) or attended as they arrive (KVATT, ring or direct), whichever
                 is predicted faster
(`pipeline_dp.py` has the EdgePipe-style pipeline.) Only `sequence` overlaps (it picks its tile
count from `tile_choices`; the others have tiles = 1), and none returns a plan that does not fit: they raise InfeasiblePlanError with the shortfall.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Sequence

from galaxy.compiler.cost.memory import memory_shortfall_bytes, rank_memory_bytes
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.schedule import KEY_VALUE_OPS, stage_schedule
from galaxy.compiler.planner.assemble import Split, build_hmp_plan, hmp_plan, ring_order, with_prediction
from galaxy.compiler.planner.search_space import KEY_VALUE_CHOICES, TILE_CHOICES
from galaxy.compiler.planner.explain import block_note, device_notes, fmt_bytes, overlap_note
from galaxy.runtime.splits import split_sizes

log = logging.getLogger(__name__)

WHAT = {"single": "the fastest device that holds the whole model, alone",
        "even": "every device, equal heads, columns and tokens, hybrid parallelism, no overlap",
        "megatron": "Megatron-style tensor parallelism: every device, equal heads and columns, every token "
                    "on every rank, an all-reduce after attention and after the MLP, replicated connective blocks",
        "proportional": "every device, heads, columns and tokens in proportion to GFLOP/s, no overlap",
        "sequence": "sequence parallelism only: whole layers on each device's own tokens, every weight "
                    "on every device, keys and values all-gathered"}


def require_fit(plan: Plan, table: CostTable) -> Plan:
    shortfall = memory_shortfall_bytes(plan, table)
    if shortfall:
        lacks = ", ".join(f"{name} lacks {fmt_bytes(b)}" for name, b in shortfall.items())
        raise InfeasiblePlanError(f"{plan.solver} plan of {table.model} does not fit on {table.cluster}: {lacks}",
                                  shortfall)
    return plan


def weighted_split(table: CostTable, used: Sequence[int], head: int, weights: Sequence[float],
                   solver: str, objective: str) -> Plan:
    """Split groups, columns and tokens over `used` (in ring order) by `weights` (aligned with it)."""
    ring = ring_order(table, used, head)
    split = Split(used=tuple(used), head=head,
                  groups=dict(zip(ring, split_sizes(table.kv_groups, weights))),
                  columns=dict(zip(ring, split_sizes(table.columns, weights))),
                  tokens=dict(zip(ring, split_sizes(table.tokens, weights))))
    plan = require_fit(hmp_plan(table, split, solver, objective), table)
    why_out = {d: f"not used by the {solver} baseline" for d in range(table.n_devices) if d not in used}
    notes = [f"{solver} baseline: {WHAT[solver]}", overlap_note(plan), block_note(plan),
             *device_notes(table, plan, why_out)]
    return replace(plan, notes=tuple(notes))


def single_device_plan(table: CostTable, device: str | None = None, objective: str = "latency") -> Plan:
    """`device` alone, or the fastest device whose memory holds the whole model."""
    candidates = [table.index(device)] if device else list(table.speed_order())
    shortfall: dict[str, int] = {}
    for d in candidates:
        try:
            plan = weighted_split(table, [d], d, [1.0], "single", objective)
        except InfeasiblePlanError as err:
            shortfall.update(err.shortfall_bytes_by_device)
            continue
        return plan
    lacks = ", ".join(f"{name} lacks {fmt_bytes(b)}" for name, b in sorted(shortfall.items()))
    raise InfeasiblePlanError(f"no single device holds {table.model}: {lacks}", shortfall)


def even_plan(table: CostTable, objective: str = "latency") -> Plan:
    order = table.speed_order()
    return weighted_split(table, order, order[0], [1.0] * len(order), "even", objective)


def megatron_plan(table: CostTable, objective: str = "latency") -> Plan:
    """Even heads and columns over every device; the hidden stream stays whole on every rank."""
    order = table.speed_order()
    even = build_hmp_plan(table, Split(used=order, head=order[0],
                                       groups=dict(zip(order, split_sizes(table.kv_groups, [1.0] * len(order)))),
                                       columns=dict(zip(order, split_sizes(table.columns, [1.0] * len(order)))),
                                       tokens={d: table.tokens for d in order}), "megatron", objective)
    stage = replace(even.stages[0], schedule=stage_schedule(len(order), shape="tensor", wire=table.wire_dtype,
                                                                     parallel=table.parallel_blocks))
    plan = require_fit(with_prediction(replace(even, stages=(stage,)), table), table)
    notes = [f"megatron baseline: {WHAT['megatron']}", block_note(plan), *device_notes(table, plan, {})]
    return replace(plan, notes=tuple(notes))


def proportional_plan(table: CostTable, objective: str = "latency") -> Plan:
    order = table.speed_order()
    return weighted_split(table, order, order[0], [table.flops_per_s[d] for d in order], "proportional", objective)


def sequence_plan(table: CostTable, objective: str = "latency", tile_choices: tuple[int, ...] = TILE_CHOICES,
                  key_value_ops: tuple[str, ...] = KEY_VALUE_CHOICES) -> Plan:
    """Sequence parallelism only over the k fastest devices that hold the model, best k, with the
    best of the key/value actions `key_value_ops` (default KEY_VALUE_CHOICES; all: KEY_VALUE_OPS)."""
    whole = rank_memory_bytes(table, table.n_layers, table.kv_groups, table.columns, 1, True, False)
    holders = [d for d in table.speed_order() if table.mem_bytes[d] >= whole]
    best: Plan | None = None
    for k in range(1, len(holders) + 1):
        try:
            plan = _sequence_split(table, holders[:k], objective, tile_choices, key_value_ops)
        except InfeasiblePlanError as err:
            log.debug("sequence parallelism over %d devices: %s", k, err)
            continue
        if best is None or plan.predicted_latency_s < best.predicted_latency_s:
            best = plan
    if best is None:
        return single_device_plan(table, objective=objective)  # raises with each device's shortfall
    used = {table.index(name) for name in best.devices}
    why_out = {d: (f"cannot hold the whole model ({fmt_bytes(whole)} or more, has {fmt_bytes(table.mem_bytes[d])})"
                   if table.mem_bytes[d] < whole else "adding it does not lower the predicted latency")
               for d in range(table.n_devices) if d not in used}
    notes = (f"sequence baseline: {WHAT['sequence']}", overlap_note(best), block_note(best),
             *device_notes(table, best, why_out))
    return replace(best, notes=notes)


def _sequence_split(table: CostTable, used: Sequence[int], objective: str, tile_choices: tuple[int, ...],
                    key_value_ops: tuple[str, ...] = KEY_VALUE_OPS) -> Plan:
    per_token_s = [(table.kv_groups * table.attention_s_per_group[d] + table.columns * table.mlp_s_per_column[d])
                   / table.tokens + table.connective_s_per_token[d] for d in used]
    tokens = split_sizes(table.tokens, [1 / u for u in per_token_s])
    if min(tokens) < 1:
        raise InfeasiblePlanError(f"{len(used)} devices: the slowest gets no token", {})
    split = Split(used=tuple(used), head=used[0], groups={}, columns={}, tokens=dict(zip(used, tokens)))
    plan = build_hmp_plan(table, split, "sequence", objective)
    ring = ring_order(table, used, used[0])
    n = len(ring)
    stage = replace(plan.stages[0], heads_per_rank=(table.heads,) * n,
                    kv_heads_per_rank=(table.kv_groups,) * n, columns_per_rank=(table.columns,) * n,
                    tokens_per_rank=tuple(split.tokens[d] for d in ring))
    schedules = [stage_schedule(n, shape="sequence", tiles=t, wire=table.wire_dtype, parallel=table.parallel_blocks,
                                key_values=op, algorithm=algorithm)
                 for op, t, algorithm in sequence_choices(n, min(stage.tokens_per_rank), tile_choices, key_value_ops)]
    candidates = [with_prediction(replace(plan, stages=(replace(stage, schedule=s),)), table) for s in schedules]
    return require_fit(min(candidates, key=lambda p: p.predicted_latency_s), table)  # ties: the first listed


def sequence_choices(ranks: int, fewest_tokens: int, tile_choices: tuple[int, ...],
                     key_value_ops: tuple[str, ...] = KEY_VALUE_OPS) -> list[tuple[str, int, str]]:
    """(key/value action, tiles, algorithm) a sequence-parallel stage may run, plain gather first:
    KVAG with keys and values sent tile by tile as they are projected (tiles no larger than the
    fewest tokens of a rank), KVATT attending to them as they arrive, over a ring or directly.
    One rank runs alone: the plain action only."""
    if ranks < 2:
        return [(key_value_ops[0], 1, "ring")]
    gathers = [("KVAG", t, "ring") for t in tile_choices if 1 <= t <= fewest_tokens] if "KVAG" in key_value_ops else []
    attends = [("KVATT", 1, algorithm) for algorithm in ("ring", "direct")] if "KVATT" in key_value_ops else []
    return gathers + attends or [("KVAG", 1, "ring")]


def or_sequence_only(plan: Plan, table: CostTable, tile_choices: tuple[int, ...] = TILE_CHOICES) -> Plan:
    """The sequence-parallel-only plan instead of the ILP's single-stage `plan`, if it fits, uses
    more than one device and is predicted faster."""
    try:
        sequence = sequence_plan(table, plan.objective, tile_choices)
    except InfeasiblePlanError:
        return plan
    if len(sequence.devices) == 1 or sequence.predicted_latency_s >= plan.predicted_latency_s:
        return plan
    log.info("sequence parallelism only beats the hybrid plan: %.1f ms vs %.1f ms",
             sequence.predicted_latency_s * 1e3, plan.predicted_latency_s * 1e3)
    why = (f"sequence parallelism only: predicted {sequence.predicted_latency_s * 1e3:.1f} ms against "
           f"{plan.predicted_latency_s * 1e3:.1f} ms for the best hybrid plan ({plan.solver}); every used device "
           "holds the whole model, and a layer gathers only keys and values, once")
    return replace(sequence, solver=plan.solver, notes=(why, *sequence.notes[1:]))
