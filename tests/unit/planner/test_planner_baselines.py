"""Baselines return valid, predicted Plans; the pipeline DP matches exhaustive partitioning."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
from planner_fixtures import every_pipeline, make_cluster, random_table

from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner import SOLVERS, make_plan
from galaxy.compiler.planner.baselines import even_plan, proportional_plan, single_device_plan
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan, search_pipeline

CLUSTER = [("a", 4, 20), ("b", 2, 12), ("c", 2, 7)]


@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "brute-force"])
def test_every_solver_returns_a_valid_predicted_plan(bert, solver):
    plan = make_plan(bert, make_cluster(CLUSTER), solver=solver)  # make_plan runs validate_plan
    assert plan.solver == ("single" if solver == "single" else solver)
    assert plan.predicted_latency_s > 0 and plan.predicted_blocks


def test_even_and_proportional_splits(bert):
    from galaxy.compiler.cost.table import build_cost_table
    table = build_cost_table(bert, make_cluster(CLUSTER))
    even = even_plan(table).stages[0]
    assert even.heads_per_rank == (4, 4, 4) and even.tokens_per_rank == (86, 85, 85)
    prop = proportional_plan(table)
    assert prop.devices == ("a", "b", "c") and prop.stages[0].heads_per_rank == (6, 4, 2)
    assert single_device_plan(table).devices == ("a",)


def test_baseline_that_does_not_fit_raises(bert):
    from galaxy.compiler.cost.table import build_cost_table
    table = build_cost_table(bert, make_cluster([("a", 0.3, 20), ("b", 0.3, 10)]))
    with pytest.raises(InfeasiblePlanError) as info:
        single_device_plan(table)
    assert set(info.value.shortfall_bytes_by_device) == {"a", "b"}


def metric(plan: Plan, objective: str) -> float:
    return plan.predicted_s_per_request if objective == "throughput" else plan.predicted_latency_s


@pytest.mark.parametrize("objective", ["latency", "throughput"])
@pytest.mark.parametrize("seed", range(8))
def test_pipeline_dp_matches_exhaustive(seed, objective):
    """Device groups x layer partitions, every one predicted: the DP finds the least, and its own
    estimate is the chosen plan's prediction."""
    rng = random.Random(seed)
    n = rng.choice([2, 3, 4])
    table = random_table(rng, n, layers=rng.choice([3, 4, 5]))
    table = replace(table, mem_bytes=tuple(int(m * rng.uniform(0.5, 2.5)) for m in table.mem_bytes))
    max_group = rng.choice([2, n])
    expected = min((metric(p, objective) for p in every_pipeline(table, max_group)), default=float("inf"))
    if expected == float("inf"):
        with pytest.raises(InfeasiblePlanError):
            pipeline_dp_plan(table, objective, max_group)
        return
    choice = search_pipeline(table, objective, max_group)
    plan = pipeline_dp_plan(table, objective, max_group)
    assert metric(plan, objective) == pytest.approx(expected, rel=1e-12)
    assert choice.estimate_s == pytest.approx(metric(plan, objective), rel=1e-12)


def test_pipeline_dp_searches_groups_of_devices():
    """Some random instance's best pipeline has a stage of several devices (the search is not vacuous)."""
    found = set()
    for seed in range(30):
        rng = random.Random(seed)
        table = random_table(rng, 3, layers=4)
        table = replace(table, mem_bytes=tuple(int(m * rng.uniform(0.5, 2.5)) for m in table.mem_bytes))
        try:
            plan = pipeline_dp_plan(table, "latency")
        except InfeasiblePlanError:
            continue
        found.add((len(plan.stages) > 1, max(len(s.ranks) for s in plan.stages) > 1))
    assert (True, True) in found


def test_sequence_only_baseline_splits_tokens_by_speed_and_keeps_every_weight(bert):
    from galaxy.compiler.cost.table import build_cost_table
    from galaxy.compiler.planner.baselines import sequence_plan
    table = build_cost_table(bert, make_cluster(CLUSTER, mbit_per_s=10_000))
    stage = sequence_plan(table).stages[0]
    assert stage.schedule.block("attn").shape == "sequence" and not stage.schedule.shards_weights
    assert set(stage.heads_per_rank) == {12} and set(stage.columns_per_rank) == {3072}
    tokens = dict(zip(sequence_plan(table).devices, stage.tokens_per_rank))
    assert set(tokens) == {"a", "b", "c"}  # 10 Gbit/s: every device pays for its key/value gather
    assert tokens["a"] > tokens["b"] > tokens["c"] > 0 and sum(tokens.values()) == 256


def test_sequence_only_baseline_leaves_out_devices_that_cannot_hold_the_model(bert):
    from galaxy.compiler.cost.table import build_cost_table
    from galaxy.compiler.planner.baselines import sequence_plan
    table = build_cost_table(bert, make_cluster([("a", 4, 20), ("b", 0.3, 20)], mbit_per_s=10_000))
    plan = sequence_plan(table)
    assert plan.devices == ("a",)
    assert any(n.startswith("out b") for n in plan.notes)


def test_sequence_only_baseline_skips_a_fastest_device_that_cannot_hold_the_model(bert):
    """The k fastest devices that hold the model, not the k fastest: a small fast device does not
    keep the others from sharing the tokens."""
    from galaxy.compiler.cost.table import build_cost_table
    from galaxy.compiler.planner.baselines import sequence_plan
    table = build_cost_table(bert, make_cluster([("a", 0.3, 40), ("b", 4, 20), ("c", 4, 20)], mbit_per_s=10_000))
    plan = sequence_plan(table)
    assert plan.solver == "sequence" and plan.devices == ("b", "c")
    assert str(plan.stages[0].schedule).startswith("SCATTER | attn:KVAG")
    assert any(n.startswith("out a") and "cannot hold the whole model" in n for n in plan.notes)


@pytest.mark.parametrize("memory_gib", [4, 0.3])
def test_ilp_takes_sequence_parallelism_only_when_it_fits_and_is_faster(bert, memory_gib):
    # 2 ms a ring step, as on the emulator: four collectives a layer cost more than one
    cluster = make_cluster([("a", memory_gib, 20), ("b", memory_gib, 12), ("c", memory_gib, 7)], mbit_per_s=1000,
                           latency_s=2e-3)
    hybrid = make_plan(bert, cluster, sequence_only=False)
    chosen = make_plan(bert, cluster)
    if memory_gib < 0.5:  # BERT-base's 0.44 GB of weights fit on no device alone
        assert chosen == hybrid
        return
    sequence = make_plan(bert, cluster, solver="sequence")
    assert sequence.predicted_latency_s < hybrid.predicted_latency_s
    assert not chosen.stages[0].schedule.shards_weights and chosen.solver == "ilp"
    assert chosen.predicted_latency_s == sequence.predicted_latency_s
    assert chosen.notes[0].startswith("sequence parallelism only: predicted")


def test_sequence_only_baseline_sends_keys_and_values_in_tiles_when_the_projection_hides_them(bert):
    """Tiles pay an alpha per piece and hide up to (1 - 1/t) of the QKV projection: on a slow
    link with a small alpha they win, with a large alpha one piece is best."""
    from dataclasses import replace
    from galaxy.compiler.cost.latency import predict
    from galaxy.compiler.cost.table import build_cost_table
    from galaxy.compiler.planner.baselines import sequence_plan
    from galaxy.compiler.ir.schedule import stage_schedule
    from galaxy.compiler.planner.search_space import TILE_CHOICES
    for latency_s, tiled in ((1e-5, True), (0.03, False)):
        table = build_cost_table(bert, make_cluster(CLUSTER, mbit_per_s=1_000, latency_s=latency_s))
        plan = sequence_plan(table, key_value_ops=("KVAG",))
        assert len(plan.devices) > 1 and (plan.stages[0].schedule.tiles > 1) == tiled, (latency_s, plan.stages[0])
        others = [predict(replace(plan, stages=(replace(plan.stages[0], schedule=stage_schedule(
            len(plan.devices), shape="sequence", tiles=t)),)), table)[0] for t in TILE_CHOICES]
        assert plan.predicted_latency_s == pytest.approx(min(others))


@pytest.mark.parametrize("mbit_per_s,latency_s", [(1_000, 2e-3), (100, 2e-3), (10_000, 1e-5)])
def test_sequence_only_baseline_takes_the_cheapest_key_value_action(bert, mbit_per_s, latency_s):
    """Gathering keys and values (KVAG, each tile count) or attending as they arrive (KVATT, ring or
    direct): the plan is the cheapest of every choice, predicted the same way (the slow twin)."""
    from dataclasses import replace
    from galaxy.compiler.cost.latency import predict
    from galaxy.compiler.cost.table import build_cost_table
    from galaxy.compiler.ir.schedule import stage_schedule
    from galaxy.compiler.ir.schedule import KEY_VALUE_OPS
    from galaxy.compiler.planner.baselines import sequence_plan
    table = build_cost_table(bert, make_cluster(CLUSTER, mbit_per_s=mbit_per_s, latency_s=latency_s))
    plan = sequence_plan(table, key_value_ops=KEY_VALUE_OPS)
    n = len(plan.devices)
    choices = [("KVAG", t, "ring") for t in (1, 2, 4, 8)] + [("KVATT", 1, "ring"), ("KVATT", 1, "direct")]
    every = [predict(replace(plan, stages=(replace(plan.stages[0], schedule=stage_schedule(
        n, shape="sequence", tiles=t, key_values=op, algorithm=algorithm)),)), table)[0] for op, t, algorithm in choices]
    assert plan.predicted_latency_s == pytest.approx(min(every))
    gather_only = sequence_plan(table)  # the default: KVATT only when asked (planner/search_space.py)
    assert all(a.op == "KVAG" for a in gather_only.stages[0].schedule.block("attn").actions)
    assert plan.predicted_latency_s <= gather_only.predicted_latency_s
