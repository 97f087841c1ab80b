"""Pick ring or direct for each all-gather and reduce-scatter of a plan, by predicted latency.

The ILP plans with ring collectives (their time is linear in the largest chunk). A direct
collective sends every rank's chunk to every peer at once (runtime/direct.py): the same bytes per
device, one alpha instead of n - 1 and no forwarding hop, and with a link rate per pair (not one
card per device) n - 1 times less link time (cost/actions.py). At n = 2 both are the same transfer,
so ring stays; tiled actions (t > 1) are ring-only. Each candidate action switches to direct when
the whole plan's prediction drops: one decision per block border, shared by every layer.
"""
from __future__ import annotations

from dataclasses import replace

from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.schedule import OVERLAPPING_OPS, BlockSchedule
from galaxy.compiler.planner.assemble import with_prediction


def choose_algorithms(plan: Plan, table: CostTable) -> Plan:
    """`plan` with each AG/RS of a stage of 3 or more ranks direct where that is predicted faster;
    its notes say what changed and the predicted gain."""
    ring = plan
    for i, stage in enumerate(plan.stages):
        if len(stage.ranks) < 3:
            continue
        for b, block in enumerate(stage.schedule.layer):
            for a, action in enumerate(block.actions):
                if action.op not in OVERLAPPING_OPS or action.tiles > 1:
                    continue
                actions = list(block.actions)
                actions[a] = replace(action, algorithm="direct")
                trial = with_prediction(_with_block(plan, i, b, BlockSchedule(block.block, tuple(actions))), table)
                if trial.predicted_latency_s < plan.predicted_latency_s:
                    plan, stage, block = trial, trial.stages[i], trial.stages[i].schedule.layer[b]
    if plan is ring:
        return plan
    changed = "; ".join(f"stage {i}: {s.schedule}" for i, s in enumerate(plan.stages)
                        if s.schedule != ring.stages[i].schedule)
    note = (f"direct collectives where they beat the ring ({changed}): predicted "
            f"{ring.predicted_latency_s * 1e3:.3f} ms -> {plan.predicted_latency_s * 1e3:.3f} ms")
    return replace(plan, notes=(*plan.notes, note))


def _with_block(plan: Plan, stage_index: int, block_index: int, block: BlockSchedule) -> Plan:
    stage = plan.stages[stage_index]
    layer = list(stage.schedule.layer)
    layer[block_index] = block
    stages = list(plan.stages)
    stages[stage_index] = replace(stage, schedule=replace(stage.schedule, layer=tuple(layer)))
    return replace(plan, stages=tuple(stages))
