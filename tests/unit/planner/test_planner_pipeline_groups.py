"""Pipeline stages on device groups running HMP: chosen when they win, and fast to search."""
from __future__ import annotations

import time
from dataclasses import replace

import pytest
from planner_fixtures import EIGHT_DEVICES, llama_70b, make_cluster

from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.ir.cluster import Cluster, Link
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan
from galaxy.compiler.planner.solve import plan_ilp


def fast_pair_and_a_slow_device(a_gib: float = 0.25, b_gib: float = 0.25) -> Cluster:
    """a and b: fast, 10 Gbit/s between them, too little memory to hold BERT-base together in one
    stage; c: slow, roomy, 100 Mbit/s to both."""
    cluster = make_cluster([("a", a_gib, 20), ("b", b_gib, 20), ("c", 4, 5)], mbit_per_s=100)
    return replace(cluster, link_overrides=(("a", "b", Link(10_000e6 / 8, 5e-5)),))


def test_a_group_stage_beats_one_device_stages_and_the_single_stage(bert):
    cluster = fast_pair_and_a_slow_device()
    table = build_cost_table(bert, cluster)
    plan = make_plan(bert, cluster)
    assert [[plan.devices[r] for r in s.ranks] for s in plan.stages] == [["a", "b"], ["c"]]
    assert plan.solver == "pipeline-dp" and plan.notes[0].startswith("latency: chose the 2-stage pipeline")
    one_device_stages = pipeline_dp_plan(table, "latency", max_group_devices=1)
    assert all(len(s.ranks) == 1 for s in one_device_stages.stages)
    assert plan.predicted_latency_s < one_device_stages.predicted_latency_s
    assert plan.predicted_latency_s < plan_ilp(table).predicted_latency_s
    first = plan.stages[0]
    assert any(n.startswith(f"stage 0: a+b runs layers 0-{first.end_layer - 1} (HMP") for n in plan.notes)


def test_a_group_stage_for_many_requests(bert):
    """b holds only four layers alone and c is slow: b and c sharing the last six layers beat both
    alone as stages (and a single stage, one request at a time)."""
    cluster = fast_pair_and_a_slow_device(a_gib=0.35, b_gib=0.15)
    table = build_cost_table(bert, cluster)
    plan = make_plan(bert, cluster, objective="throughput")
    assert [[plan.devices[r] for r in s.ranks] for s in plan.stages] == [["a"], ["b", "c"]]
    one_device_stages = pipeline_dp_plan(table, "throughput", max_group_devices=1)
    assert plan.predicted_s_per_request < one_device_stages.predicted_s_per_request
    assert plan.predicted_s_per_request < plan_ilp(table, "throughput").predicted_s_per_request
    assert plan.notes[0].startswith("throughput: chose the pipeline") and "busiest: stage" in plan.notes[0]


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_seventy_b_on_eight_devices_searches_in_well_under_a_second(objective):
    table = build_cost_table(llama_70b(), make_cluster(EIGHT_DEVICES), wire_dtype="float16")
    start = time.perf_counter()
    plan = pipeline_dp_plan(table, objective)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"pipeline DP took {elapsed:.2f} s"
    assert sum(len(s.layers) for s in plan.stages) == 80
