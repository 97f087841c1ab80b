"""Objective "latency": the ILP's single-stage plan, or a pipeline of device groups if it is faster.

A single stage runs every layer over one ring; a pipeline runs each layer range on its own group
(planner/pipeline_dp.py). For one request a pipeline's stages run one after another, so it wins
only when a single stage must take slow devices or slow links into every layer (because the fast
devices cannot hold the whole model) while a pipeline keeps them to a few layers. Lower predicted
latency wins; on a tie the single stage (fewer hand-offs).
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.explain import fmt_s
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan

log = logging.getLogger(__name__)


def faster_challenger(plan: Plan, build: Callable[[], Plan], takes_part: Callable[[Plan], bool]) -> Plan | None:
    """`build()` if `plan` has one stage and the challenger is built (fits), `takes_part` and predicts a
    lower latency; else None."""
    if len(plan.stages) > 1:  # already the pipeline DP's (no single stage fits)
        return None
    try:
        challenger = build()
    except InfeasiblePlanError:
        return None
    if not takes_part(challenger) or challenger.predicted_latency_s >= plan.predicted_latency_s:
        return None
    log.info("%s beats the single stage: %.1f ms vs %.1f ms", challenger.solver,
             challenger.predicted_latency_s * 1e3, plan.predicted_latency_s * 1e3)
    return challenger


def or_pipeline(single: Plan, table: CostTable) -> Plan:
    """The pipeline DP's plan instead of the single-stage `single` if it predicts a lower latency."""
    pipe = faster_challenger(single, lambda: pipeline_dp_plan(table, single.objective), lambda p: len(p.stages) > 1)
    if pipe is None:
        return single
    why = (f"latency: chose the {len(pipe.stages)}-stage pipeline, predicted {fmt_s(pipe.predicted_latency_s)} "
           f"against {fmt_s(single.predicted_latency_s)} for the best single-stage plan ({single.solver}, "
           f"{single.world_size} device{'s' if single.world_size > 1 else ''})")
    return replace(pipe, notes=(why, *pipe.notes))
