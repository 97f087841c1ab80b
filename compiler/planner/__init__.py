"""Planner: CostTable -> Plan. The ILP and every baseline return the same Plan type.

    make_plan(summary, cluster, objective="latency", solver="ilp", time_limit_s=60.0) -> Plan

solver: ilp (PuLP; CBC, or HiGHS with backend="highs") | single | even | proportional |
sequence | pipeline-dp | brute-force (tiny models only). If no single-stage plan fits, the ILP falls back
to a pipeline of whole layers whose stages are device groups running HMP (pipeline_dp.py) and says
so in Plan.notes. With `sequence_only=True` (the default) the ILP's hybrid plan also competes with
the sequence-parallel-only plan, which needs every used device to hold the whole model but gathers
only keys and values, once a layer: the lower predicted latency wins. The winner then competes
with the pipeline DP's plan (choose.py): a pipeline wins when it predicts a lower latency. With
objective "throughput" the single stage competes with the pipeline DP's on time per request when
requests stream (planner/throughput.py).
"""
from __future__ import annotations

import logging
from dataclasses import replace

from galaxy.compiler.cost.table import CostTable, build_cost_table
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.plan import Plan, validate_plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner.baselines import (even_plan, or_sequence_only, proportional_plan, sequence_plan,
                                               single_device_plan)
from galaxy.compiler.planner.brute_force import brute_force_plan
from galaxy.compiler.planner.choose import or_pipeline
from galaxy.compiler.planner.ilp import TILE_CHOICES
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan
from galaxy.compiler.planner.solve import plan_ilp
from galaxy.compiler.planner.throughput import throughput_plan

log = logging.getLogger(__name__)

SOLVERS = ("ilp", "single", "even", "proportional", "sequence", "pipeline-dp", "brute-force")
OBJECTIVES = ("latency", "throughput")

__all__ = ["OBJECTIVES", "SOLVERS", "make_plan", "plan_from_table"]


def make_plan(summary: ModelSummary, cluster: Cluster, objective: str = "latency", solver: str = "ilp",
              time_limit_s: float = 60.0, *, wire_dtype_bytes: int = 4, backend: str = "cbc",
              tile_choices: tuple[int, ...] = TILE_CHOICES, sequence_only: bool = True) -> Plan:
    table = build_cost_table(summary, cluster, wire_dtype_bytes)
    plan = plan_from_table(table, objective, solver, time_limit_s, backend=backend, tile_choices=tile_choices,
                           sequence_only=sequence_only)
    validate_plan(plan, heads=summary.heads, kv_heads=summary.kv_heads, intermediate=summary.intermediate,
                  seq_len=summary.seq_len, n_layers=summary.n_layers)
    return plan


def plan_from_table(table: CostTable, objective: str = "latency", solver: str = "ilp", time_limit_s: float = 60.0,
                    *, backend: str = "cbc", tile_choices: tuple[int, ...] = TILE_CHOICES,
                    sequence_only: bool = True) -> Plan:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if solver == "ilp" and objective == "throughput":
        return throughput_plan(table, backend, time_limit_s, tile_choices, sequence_only)
    if solver == "ilp":
        plan = _ilp_or_pipeline(table, objective, time_limit_s, backend, tile_choices)
        return or_pipeline(or_sequence_only(plan, table) if sequence_only else plan, table)
    if solver == "single":
        return single_device_plan(table, objective=objective)
    if solver == "even":
        return even_plan(table, objective)
    if solver == "proportional":
        return proportional_plan(table, objective)
    if solver == "sequence":
        return sequence_plan(table, objective)
    if solver == "pipeline-dp":
        return pipeline_dp_plan(table, objective)
    if solver == "brute-force":
        return brute_force_plan(table, tile_choices, objective)
    raise ValueError(f"solver {solver!r} is not one of {', '.join(SOLVERS)}")


def _ilp_or_pipeline(table: CostTable, objective: str, time_limit_s: float, backend: str,
                     tile_choices: tuple[int, ...]) -> Plan:
    try:
        return plan_ilp(table, objective, backend, time_limit_s, tile_choices)
    except InfeasiblePlanError as err:
        try:
            pipe = pipeline_dp_plan(table, objective)
        except InfeasiblePlanError:
            raise err from None
        log.info("no single-stage plan fits; using a pipeline of whole layers")
        return replace(pipe, notes=(f"no single-stage plan fits ({err}); a pipeline of whole layers does",
                                    *pipe.notes))
