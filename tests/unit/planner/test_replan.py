"""Re-planning a running cluster (planner/replan.py): without a lost device, at measured rates."""
from __future__ import annotations

from dataclasses import replace

import pytest
from planner_fixtures import make_cluster

from galaxy.compiler.cost.latency import predict
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.errors import InfeasiblePlanError, PlanFileError
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.replan import cluster_now, replan, slowed

THREE = [("desk", 12, 80), ("lap", 6, 80), ("tab", 6, 80)]


def test_a_lost_device_is_left_out(bert):
    cluster = make_cluster(THREE)
    running = make_plan(bert, cluster)
    found = replan(bert, cluster, running, ["desk", "tab"])
    assert "lap" not in found.plan.devices and set(found.plan.devices) <= {"desk", "tab"}
    assert found.cluster.names == ("desk", "tab")
    assert found.current_predicted_s is None  # the running plan uses a device that is gone


def test_a_slower_device_gets_less_work(bert):
    cluster = make_cluster(THREE, mbit_per_s=10000)
    running = make_plan(bert, cluster, solver="proportional")
    found = replan(bert, cluster, running, cluster.names, {"tab": 4.0})
    shares = dict(zip(found.plan.devices, found.plan.stages[0].columns_per_rank))
    assert shares.get("tab", 0) < min(shares[d] for d in shares if d != "tab")
    # the running plan, at the measured rates, is what the new one is judged against
    expected, _ = predict(running, build_cost_table(bert, found.cluster))
    assert found.current_predicted_s == pytest.approx(expected)
    assert found.predicted_s < found.current_predicted_s


def test_slowdown_scales_every_rate_of_the_device():
    device = make_cluster(THREE).device("tab")
    slow = slowed(device, 4.0)
    assert slow.flops_per_s == device.flops_per_s / 4 and slow.cpu_share == device.cpu_share / 4
    assert slow.comm_cpu_s_per_byte == device.comm_cpu_s_per_byte * 4 and slow.mem_bytes == device.mem_bytes
    with pytest.raises(ValueError):
        slowed(device, 0.0)


def test_cluster_now_keeps_the_cluster_order_and_refuses_strangers():
    cluster = make_cluster(THREE)
    assert cluster_now(cluster, ["tab", "desk"]).names == ("desk", "tab")
    with pytest.raises(PlanFileError, match="phone"):
        cluster_now(cluster, ["desk", "phone"])


def test_devices_left_that_cannot_hold_the_model_say_by_how_much(bert):
    cluster = make_cluster([("a", 0.19, 80), ("b", 0.19, 80), ("c", 0.19, 80)])
    running = make_plan(bert, cluster)
    assert running.world_size == 3
    with pytest.raises(InfeasiblePlanError) as info:
        replan(bert, cluster, running, ["a", "b"])
    assert sum(info.value.shortfall_bytes_by_device.values()) > 0
    assert "lacks" in str(info.value) and "does not fit" in str(info.value)
    assert all(d in ("a", "b") for d in info.value.shortfall_bytes_by_device)


def test_a_hand_written_plan_is_replanned_by_the_whole_planner(bert):
    cluster = make_cluster(THREE)
    running = replace(make_plan(bert, cluster, solver="even"), solver="manual")
    assert replan(bert, cluster, running, ["desk", "lap"]).plan.solver != "manual"
