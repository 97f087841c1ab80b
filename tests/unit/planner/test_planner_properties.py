"""Properties of ILP plans on BERT-base and a 70B-shaped model (real CBC, never mocked)."""
from __future__ import annotations

import time

import pytest
from planner_fixtures import EIGHT_DEVICES, make_cluster

from galaxy.compiler.cost.memory import plan_memory_bytes
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.planner import make_plan

MIB = 2 ** 20


def shares(plan):
    stage = plan.stages[0]
    return {plan.devices[r]: (stage.heads_per_rank[j], stage.columns_per_rank[j], stage.tokens_per_rank[j])
            for j, r in enumerate(stage.ranks)}


def test_identical_devices_split_evenly(bert):
    plan = make_plan(bert, make_cluster([(f"d{i}", 4, 20) for i in range(4)], mbit_per_s=10_000))
    heads, columns, tokens = zip(*shares(plan).values())
    assert plan.world_size > 1
    assert max(heads) - min(heads) <= 1 and max(tokens) - min(tokens) <= 1
    assert max(columns) - min(columns) <= 64


def test_twice_as_fast_gets_twice_the_work(bert):
    cluster = make_cluster([("fast", 4, 40), ("slow", 4, 20)], mbit_per_s=10_000, comm_cpu_s_per_byte=1e-10)
    got = shares(make_plan(bert, cluster, sequence_only=False))  # the hybrid plan's heads and columns
    assert got["fast"][0] == 2 * got["slow"][0] == 8
    assert 1.8 <= got["fast"][1] / got["slow"][1] <= 2.2


def test_memory_tight_device_gets_less(bert):
    cluster = make_cluster([("roomy", 4, 20), ("tight", 0.15, 20)], mbit_per_s=10_000)
    plan = make_plan(bert, cluster)
    got = shares(plan)
    assert got["tight"][0] <= got["roomy"][0] and got["tight"][1] < got["roomy"][1]
    used = plan_memory_bytes(plan, build_cost_table(bert, cluster))
    assert used["tight"] <= 0.15 * 2**30 and used["tight"] < used["roomy"]
    assert any(n.startswith("in  tight") for n in plan.notes)


def test_impossible_cluster_says_who_lacks_how_much(bert):
    cluster = make_cluster([("a", 0.15, 20), ("b", 0.15, 10)])
    table = build_cost_table(bert, cluster)
    with pytest.raises(InfeasiblePlanError) as info:
        make_plan(bert, cluster)
    shortfall = info.value.shortfall_bytes_by_device
    need = (table.n_layers * (table.kv_groups * table.weight_bytes_per_group
                              + table.columns * table.weight_bytes_per_column + 2 * table.connective_bytes_per_layer)
            + table.kv_groups * table.act_bytes_per_group + table.columns * table.act_bytes_per_column
            + table.tokens * table.act_bytes_per_token + 2 * (table.buffer_bytes + table.prologue_bytes)
            + table.epilogue_bytes)
    assert sorted(shortfall) == ["a", "b"]  # both full: the total lack is what the model needs beyond both
    assert sum(shortfall.values()) == pytest.approx(need - sum(table.mem_bytes), abs=4)
    assert "lacks" in str(info.value) and "layers would fit" in str(info.value)


def test_device_too_small_for_the_replicated_part_is_left_out(bert):
    plan = make_plan(bert, make_cluster([("big", 4, 20), ("watch", 0.05, 40)], mbit_per_s=10_000))
    assert plan.devices == ("big",)
    assert any(n.startswith("out watch") and "replicated" in n for n in plan.notes)


def test_very_low_bandwidth_picks_the_fastest_device_alone(bert):
    cluster = make_cluster([("a", 4, 20), ("b", 4, 30), ("c", 4, 10)], mbit_per_s=10)
    plan = make_plan(bert, cluster)
    assert plan.devices == ("b",)
    assert any("best plan using it" in n or "faster devices" in n for n in plan.notes if n.startswith("out"))


def test_plans_are_byte_identical_across_runs(bert):
    cluster = make_cluster([("a", 4, 20), ("b", 2, 12), ("c", 1, 7)], mbit_per_s=1000)
    assert make_plan(bert, cluster).dumps() == make_plan(bert, cluster).dumps()


def test_highs_finds_the_same_latency(bert):
    pytest.importorskip("highspy")
    cluster = make_cluster([("a", 4, 20), ("b", 2, 12), ("c", 1, 7)], mbit_per_s=1000)
    cbc, highs = make_plan(bert, cluster), make_plan(bert, cluster, backend="highs")
    assert highs.predicted_latency_s == pytest.approx(cbc.predicted_latency_s, rel=1e-5)


def test_llama_70b_on_eight_devices_solves_fast(llama70b):
    start = time.perf_counter()
    plan = make_plan(llama70b, make_cluster(EIGHT_DEVICES), wire_dtype="float16", time_limit_s=60)
    elapsed = time.perf_counter() - start
    assert elapsed < 30, f"70B plan took {elapsed:.1f} s"
    assert plan.solver == "ilp" and plan.world_size >= 6
    assert all(h % 8 == 0 for h in plan.stages[0].heads_per_rank)  # whole GQA groups
    assert plan.notes[0].startswith("ilp (cbc): optimal")


def test_ties_go_to_fewer_devices_then_cluster_order(bert):
    plan = make_plan(bert, make_cluster([(f"d{i}", 4, 20) for i in range(4)], mbit_per_s=10))
    assert plan.devices == ("d0",)


def test_device_names_that_clash_in_row_names(bert):
    plan = make_plan(bert, make_cluster([("a-b", 4, 20), ("a_b", 2, 12)], mbit_per_s=10_000))
    assert sorted(plan.devices) == ["a-b", "a_b"]
