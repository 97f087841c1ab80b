"""Objective "throughput": a pipeline when its busiest stage beats the single stage's latency."""
from __future__ import annotations

import pytest
from planner_fixtures import make_cluster

from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.cost.throughput import s_per_request, stage_busy_s
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan
from galaxy.compiler.planner.throughput import choose_for_throughput

EQUAL_PAIR = [("a", 4, 20), ("b", 4, 20)]


def test_pipeline_when_its_bottleneck_is_lower(bert):
    """Two equal devices on a slow link: two stages of six layers beat HMP over both."""
    cluster = make_cluster(EQUAL_PAIR, mbit_per_s=100)
    latency = make_plan(bert, cluster)
    plan = make_plan(bert, cluster, objective="throughput")
    assert len(latency.stages) == 1 and latency.predicted_s_per_request is None
    assert [len(s.layers) for s in plan.stages] == [6, 6]
    assert plan.predicted_s_per_request == pytest.approx(s_per_request(plan, plan.predicted_blocks))
    assert plan.predicted_s_per_request < 0.7 * latency.predicted_latency_s
    assert plan.notes[0].startswith("throughput: chose the pipeline")


def test_single_stage_when_the_pipeline_is_not_faster(bert):
    """A fast device and a very slow one: any stage on the slow one is the bottleneck."""
    cluster = make_cluster([("fast", 4, 100), ("slow", 4, 1)], mbit_per_s=1000)
    plan = make_plan(bert, cluster, objective="throughput")
    assert len(plan.stages) == 1 and plan.devices == ("fast",)
    assert plan.predicted_s_per_request == pytest.approx(plan.predicted_latency_s)
    assert plan.notes[0].startswith("throughput: a single-stage plan")


def test_one_stage_pipeline_stands_in_when_the_ilp_found_no_plan(bert):
    """No ILP plan (e.g. its time limit) and the DP's best is one stage: that stage, not a crash."""
    table = build_cost_table(bert, make_cluster([("fast", 4, 100), ("slow", 4, 1)], mbit_per_s=1000))
    pipe = pipeline_dp_plan(table, "throughput")
    assert len(pipe.stages) == 1
    plan = choose_for_throughput(None, pipe)
    assert plan.stages == pipe.stages and plan.notes[0].startswith("throughput: a single-stage plan")


def test_single_stage_when_the_link_is_too_slow(bert):
    """On a 1 Mbit/s link the hand-off of the hidden states alone outlasts the whole model."""
    cluster = make_cluster(EQUAL_PAIR, mbit_per_s=1)
    plan = make_plan(bert, cluster, objective="throughput")
    assert len(plan.stages) == 1
    assert plan.notes[0].startswith("throughput: ")


def test_throughput_plan_json_round_trips_and_latency_json_is_unchanged(bert):
    cluster = make_cluster(EQUAL_PAIR, mbit_per_s=100)
    plan = make_plan(bert, cluster, objective="throughput")
    assert Plan.from_json(plan.to_json()) == plan
    assert "predicted_s_per_request" not in make_plan(bert, cluster).to_json()
    assert "per request streaming" in str(plan)


def test_stage_busy_times_add_up_to_the_latency(bert):
    table = build_cost_table(bert, make_cluster(EQUAL_PAIR + [("c", 4, 10)], mbit_per_s=500))
    plan = pipeline_dp_plan(table, "throughput")
    assert sum(stage_busy_s(plan, plan.predicted_blocks)) == pytest.approx(plan.predicted_latency_s)
