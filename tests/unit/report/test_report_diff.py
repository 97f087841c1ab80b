"""galaxy-plan diff: devices, shares per device and block, schedules, stages, latency and block deltas."""
from __future__ import annotations

from dataclasses import replace

from report_fixtures import baseline, golden, pipeline

from galaxy.compiler.cost import block_s
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.report import PlanDocument, diff_plans
from galaxy.compiler.report.diff import cluster_differences, differences
from galaxy.compiler.report.text import ms, pct, signed_ms


def line(text: str, start: str) -> str:
    return next(x for x in text.splitlines() if x.strip().startswith(start))


def test_ilp_to_even_lists_every_change():
    text = diff_plans(golden(), baseline(golden()))
    assert text.splitlines()[0] == "plan diff: bert-base__four-uneven -> even"
    assert "model: bert-base (same summary)" in text
    assert "cluster: four-uneven (same devices and links)" in text
    assert "solver: ilp -> even" in text
    old, new = golden().plan.predicted_latency_s, baseline(golden()).plan.predicted_latency_s
    assert f"predicted latency: 751.05 ms -> {ms(new, 2)} ms ({signed_ms(new - old, 2)} ms, {pct(new, old)})" in text
    assert "devices added: dev-c (rank 2), dev-d (rank 3)" in text
    assert ("schedule: SCATTER | attn:AG(t4)>RS(t4) mlp:AG(t4)>RS(t4) | GATHER -> "
            "SCATTER | attn:AG(t0)>RS(t0) mlp:AG(t0)>RS(t0) | GATHER") in text
    assert line(text, "dev-a").split() == ["dev-a", "0", "8", "->", "3", "(-5)", "8", "->", "3", "(-5)",
                                           "2048", "->", "768", "(-1280)", "128", "->", "64", "(-64)"]
    assert line(text, "dev-d").split() == ["dev-d", "-", "->", "0", "-", "->", "3", "-", "->", "3",
                                           "-", "->", "768", "-", "->", "64"]
    even = next(b for b in baseline(golden()).plan.predicted_blocks if b.block == "attention")
    assert line(text, "0      attention").split()[2:4] == ["322.72", ms(block_s(even) * 12, 2)]
    assert "new planner notes:" in text and "even baseline" in text


def test_reverse_diff_removes_devices():
    text = diff_plans(baseline(golden()), golden())
    assert "devices removed: dev-c (was rank 2), dev-d (was rank 3)" in text
    assert line(text, "dev-c").split() == ["dev-c", "0", "->", "-", "3", "->", "-", "3", "->", "-",
                                           "768", "->", "-", "64", "->", "-"]


def test_identical_plans():
    text = diff_plans(golden(), golden())
    assert text.splitlines()[-1] == "the plans are identical"
    assert "(+0.00 ms, +0.0%)" in text


def test_stage_boundaries_and_new_blocks():
    text = diff_plans(golden(), pipeline())
    assert "stages: 1 -> 2, layers 0-11 -> 0-5 | 6-11" in text
    assert ("schedule: SCATTER | attn:AG(t4)>RS(t4) mlp:AG(t4)>RS(t4) | GATHER -> SCATTER | attn:AG(t2)>RS(t2) "
            "mlp:AG(t2)>RS(t2) | SEND || RECV | attn:AG>RS mlp:AG>RS | SEND") in text
    assert line(text, "1      transfer").split()[2] == "-"
    assert line(text, "1      transfer").split()[-1] == "new"


def test_only_rank_order_changed():
    doc = golden()
    swapped = PlanDocument(replace(doc.plan, devices=("dev-b", "dev-a")), doc.summary, doc.cluster)
    assert "rank order: dev-a, dev-b -> dev-b, dev-a" in diff_plans(doc, swapped)


def test_model_and_cluster_differences_are_named():
    doc = golden()
    other = PlanDocument(doc.plan, replace(doc.summary, seq_len=128), load_cluster("clusters/home-3.toml"))
    text = diff_plans(doc, other)
    assert "model: bert-base (seq_len 256 -> 128)" in text
    assert line(text, "cluster: four-uneven -> home-3").startswith("cluster: four-uneven -> home-3 (desktop added")


def test_cluster_differences_by_device_name():
    cluster = golden().cluster
    faster = replace(cluster, devices=(replace(cluster.devices[0], flops_per_s=7e10), *cluster.devices[1:3]))
    assert cluster_differences(cluster, faster) == "dev-d removed, dev-a flops_per_s 6.4e+10 -> 7e+10"
    assert differences({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 3]}) == "a 1 -> 2, b[1] 2 -> 3"


def test_bare_plans_say_what_is_unknown():
    text = diff_plans(PlanDocument(golden().plan), PlanDocument(golden().plan))
    assert "summary unknown for a bare plan file" in text
