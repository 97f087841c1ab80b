"""s_per_request(plan, blocks): steady-state time per request when requests stream through a plan.

Stages work on different requests at once (runtime: `stream`), so a pipeline serves one request
per slot of its busiest stage. What each stage does per request, from `predict`'s blocks:

    busy_0   = prologue + L_0 layer_0 + epilogue        (rank 0 also runs the head, and waits for
                                                        its inputs to come back: the epilogue's link time)
    busy_s   = transfer_s + L_s layer_s                 (s > 0: receiving the hidden states, then its layers)
    s_per_request = max_s busy_s                        (a one-stage plan: its latency)
"""
from __future__ import annotations

from typing import Sequence

from galaxy.compiler.cost.latency import block_s
from galaxy.compiler.ir.plan import BlockTime, Plan


def stage_busy_s(plan: Plan, blocks: Sequence[BlockTime]) -> list[float]:
    """Seconds each stage is busy per request (the prologue and epilogue count for stage 0)."""
    busy = [0.0] * len(plan.stages)
    for block in blocks:
        runs = len(plan.stages[block.stage].layers) if block.per_layer else 1
        busy[block.stage] += block_s(block) * runs
    return busy


def s_per_request(plan: Plan, blocks: Sequence[BlockTime]) -> float:
    """Steady-state seconds per request: the busiest stage's time."""
    return max(stage_busy_s(plan, blocks))
