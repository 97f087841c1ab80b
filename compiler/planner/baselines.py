"""Baselines the benchmarks run next to the ILP. Each returns a Plan, predicted with `predict`.

- single:        the fastest device that holds the whole model, alone
- even:          Megatron-style: every device, equal heads (KV groups), columns and tokens
- proportional:  every device, heads/columns/tokens in proportion to flops_per_s
(`pipeline_dp.py` has the EdgePipe-style pipeline.) None of them overlaps (tiles = 1), and none
returns a plan that does not fit: they raise InfeasiblePlanError with the shortfall.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from galaxy.compiler.cost.memory import memory_shortfall_bytes
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.assemble import Split, hmp_plan, ring_order
from galaxy.compiler.planner.explain import block_note, device_notes, fmt_bytes, overlap_note
from galaxy.runtime.splits import split_sizes

WHAT = {"single": "the fastest device that holds the whole model, alone",
        "even": "every device, equal heads, columns and tokens (Megatron-style), no overlap",
        "proportional": "every device, heads, columns and tokens in proportion to GFLOP/s, no overlap"}


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


def proportional_plan(table: CostTable, objective: str = "latency") -> Plan:
    order = table.speed_order()
    return weighted_split(table, order, order[0], [table.flops_per_s[d] for d in order], "proportional", objective)
