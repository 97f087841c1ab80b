"""The planner runs each all-gather and reduce-scatter by ring or direct, whichever predicts faster."""
from __future__ import annotations

from dataclasses import replace

from planner_fixtures import make_cluster

from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.algorithms import choose_algorithms
from galaxy.compiler.planner.assemble import with_prediction


def _all_ring(plan):
    return replace(plan, stages=tuple(replace(s, schedule=replace(s.schedule, layer=tuple(
        replace(b, actions=tuple(replace(a, algorithm="ring") for a in b.actions)) for b in s.schedule.layer)))
        for s in plan.stages))


def test_the_planner_takes_direct_where_it_is_faster(bert):
    """Four devices with a rate per pair: direct moves each chunk once instead of n - 1 times."""
    cluster = make_cluster([(f"d{i}", 4, 40) for i in range(4)], mbit_per_s=500)
    plan = make_plan(bert, cluster, sequence_only=False)
    actions = [a for b in plan.stages[0].schedule.layer for a in b.actions]
    assert len(plan.stages[0].ranks) >= 3 and any(a.algorithm == "direct" for a in actions)
    ring = _all_ring(plan)
    table = build_cost_table(bert, cluster)
    assert with_prediction(ring, table).predicted_latency_s > plan.predicted_latency_s
    assert choose_algorithms(with_prediction(ring, table), table).stages == plan.stages


def test_two_devices_keep_the_ring(bert):
    """At n = 2 a direct collective is the same single transfer: ring stays."""
    plan = make_plan(bert, make_cluster([("a", 4, 40), ("b", 4, 20)], mbit_per_s=500), sequence_only=False)
    assert all(a.algorithm == "ring" for s in plan.stages for b in s.schedule.layer for a in b.actions)


def test_several_devices_must_gain_min_gain_over_the_fastest_alone(bert):
    """A multi-device plan is kept only when predicted min_gain faster than one device; otherwise
    the plan is that device, with a note giving both predictions."""
    cluster = make_cluster([(f"d{i}", 4, 40) for i in range(3)], mbit_per_s=1000)
    several = make_plan(bert, cluster, min_gain=0.0)
    assert several.world_size > 1
    alone = make_plan(bert, cluster, min_gain=0.99)
    assert alone.world_size == 1 and "less than the 99% a multi-device plan must gain" in alone.notes[0]
