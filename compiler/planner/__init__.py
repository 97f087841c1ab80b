"""Planner: CostTable -> Plan. The ILP and every baseline return the same Plan type.

    make_plan(summary, cluster, objective="latency", solver="ilp", time_limit_s=60.0) -> Plan

solver: ilp (PuLP; CBC, or HiGHS with backend="highs") | single | even | megatron | proportional |
sequence | pipeline-dp | brute-force (tiny models only). "ilp" is the whole planner (choose.py):
the ILP's hybrid plan, against the sequence-parallel-only plan with `sequence_only=True` (the
default; it needs every used device to hold the whole model but gathers only keys and values,
once a layer), and the winner against the pipeline DP's pipeline of device groups running HMP
(pipeline_dp.py), by predicted latency, or by time per request for objective "throughput"
(planner/throughput.py). If no single stage fits, the pipeline is taken and Plan.notes says so.
Last, each all-gather and reduce-scatter runs by ring or direct, whichever predicts faster
(algorithms.py), and for latency a multi-device plan must be predicted `min_gain` (5%) faster
than the fastest device alone, or that device alone is the plan (choose.prefer_one_device).
`tile_choices` bounds the tile counts every one of them may pick (0 alone, no overlap, for parallel blocks whose
attention and MLP read different inputs, as in GPT-NeoX: their all-gather feeds two GEMMs).
"""
from __future__ import annotations

import logging

from galaxy.compiler.cost.table import CostTable, build_cost_table
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.plan import Plan, validate_plan
from galaxy.compiler.ir.schedule import gather_can_overlap
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner.algorithms import choose_algorithms
from galaxy.compiler.planner.baselines import (even_plan, megatron_plan, proportional_plan, sequence_plan,
                                               single_device_plan)
from galaxy.compiler.planner.brute_force import brute_force_plan
from galaxy.compiler.planner.choose import MIN_GAIN, candidates, choose_for_latency, prefer_one_device
from galaxy.compiler.planner.search_space import TILE_CHOICES
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan
from galaxy.compiler.planner.throughput import choose_for_throughput

log = logging.getLogger(__name__)

SOLVERS = ("ilp", "single", "even", "megatron", "proportional", "sequence", "pipeline-dp", "brute-force")
OBJECTIVES = ("latency", "throughput")

__all__ = ["OBJECTIVES", "SOLVERS", "make_plan", "plan_from_table"]


def make_plan(summary: ModelSummary, cluster: Cluster, objective: str = "latency", solver: str = "ilp",
              time_limit_s: float = 60.0, *, wire_dtype: str = "float32", backend: str = "cbc",
              tile_choices: tuple[int, ...] = TILE_CHOICES, sequence_only: bool = True,
              min_gain: float = MIN_GAIN, cache_tokens: int = 0) -> Plan:
    """`cache_tokens` > 0 plans a generation bundle's prefill: each rank also keeps the keys and values
    of that many tokens for the heads and layers it holds (counted in its memory)."""
    table = build_cost_table(summary, cluster, wire_dtype, cache_tokens=cache_tokens)
    plan = plan_from_table(table, objective, solver, time_limit_s, backend=backend, tile_choices=tile_choices,
                           sequence_only=sequence_only, min_gain=min_gain)
    validate_plan(plan, heads=summary.heads, kv_heads=summary.kv_heads, intermediate=summary.intermediate,
                  seq_len=summary.seq_len, n_layers=summary.n_layers)
    return plan


def plan_from_table(table: CostTable, objective: str = "latency", solver: str = "ilp", time_limit_s: float = 60.0,
                    *, backend: str = "cbc", tile_choices: tuple[int, ...] = TILE_CHOICES,
                    sequence_only: bool = True, min_gain: float = MIN_GAIN) -> Plan:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if not gather_can_overlap(table.parallel_block_inputs):
        tile_choices = (0,)
    if solver == "ilp":
        single, pipe, single_error = candidates(table, objective, backend, time_limit_s, tile_choices, sequence_only)
        chosen = choose_for_throughput(single, pipe) if objective == "throughput" else \
            choose_for_latency(single, pipe, single_error)
        chosen = choose_algorithms(chosen, table)
        return prefer_one_device(chosen, _alone(table, objective), min_gain) if objective == "latency" else chosen
    if solver == "single":
        return single_device_plan(table, objective=objective)
    if solver == "even":
        return even_plan(table, objective)
    if solver == "megatron":
        return megatron_plan(table, objective)
    if solver == "proportional":
        return proportional_plan(table, objective)
    if solver == "sequence":
        return sequence_plan(table, objective, tile_choices)
    if solver == "pipeline-dp":
        return pipeline_dp_plan(table, objective, tile_choices=tile_choices)
    if solver == "brute-force":
        return brute_force_plan(table, tile_choices, objective)
    raise ValueError(f"solver {solver!r} is not one of {', '.join(SOLVERS)}")


def _alone(table: CostTable, objective: str) -> Plan | None:
    """The fastest device that holds the whole model, or None."""
    try:
        return single_device_plan(table, objective=objective)
    except InfeasiblePlanError:
        return None
