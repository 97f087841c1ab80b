"""galaxy-plan show as text: shares, memory against limits, per-block times, notes."""
from __future__ import annotations

from report_fixtures import baseline, golden, pipeline

from galaxy.compiler.cost import plan_memory_bytes
from galaxy.compiler.report import PlanDocument, show_plan
from galaxy.compiler.report.text import gib


def rows(text: str, first: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.split()[:1] == [first]]


def test_header_shares_memory_and_unused_devices():
    doc = golden()
    text = show_plan(doc)
    assert text.splitlines()[0] == ("plan for bert-base on four-uneven: ilp, latency objective, wire float32, "
                                    "1 stage, 2 of 4 devices")
    assert "predicted latency 751.05 ms per forward" in text
    assert ("stage 0: layers 0-11 (12), 2 ranks, hybrid: tensor-parallel attention and MLP, "
            "sequence-parallel connective blocks") in text
    assert "  schedule: SCATTER | attn:AG(t4)>RS(t4) mlp:AG(t4)>RS(t4) | GATHER" in text
    memory = plan_memory_bytes(doc.plan, doc.cost_table())
    assert rows(text, "0")[0] == ["0", "dev-a", "8/12", "8/12", "2048/3072", "128/256",
                                  *gib(memory["dev-a"]).split(), "8.00", "GiB", f"{memory['dev-a'] / 8 / 2**30:.0%}"]
    assert rows(text, "1")[0][:6] == ["1", "dev-b", "4/12", "4/12", "1024/3072", "128/256"]
    assert "not used: dev-c (4.00 GiB), dev-d (2.00 GiB)" in text


def test_per_block_times_add_up_to_the_latency():
    text = show_plan(golden())
    blocks = {r[1]: r for r in rows(text, "0") if r[1] != "dev-a"}
    assert set(blocks) == {"prologue", "attention", "connective", "mlp", "handoff", "epilogue"}
    assert blocks["attention"][2] == "x12" and blocks["epilogue"][2] == "x1"
    total = [line.split() for line in text.splitlines() if line.split()[:1] == ["total"]][0]
    assert total == ["total", "751.05", "100%"]
    assert abs(sum(float(b[-2]) for b in blocks.values()) - 751.05) < 0.05


def test_notes_say_why_devices_are_in_or_out():
    text = show_plan(golden())
    why = text[text.index("why (planner notes):"):]
    assert "in  dev-a (rank 0" in why and "in  dev-b (rank 1" in why
    assert "out dev-c" in why and "out dev-d" in why


def test_pipeline_shows_each_stage_and_the_transfer():
    text = show_plan(pipeline())
    assert "2 stages" in text.splitlines()[0]
    assert "stage 1: layers 6-11 (6), 2 ranks, hybrid" in text
    assert "  schedule: RECV | attn:AG>RS mlp:AG>RS | SEND" in text
    transfer = rows(text, "1")
    assert any(r[1] == "transfer" and r[3:5] == ["-", "-"] for r in transfer)


def test_bare_plan_shows_unknown_memory():
    text = show_plan(PlanDocument(baseline(golden()).plan))
    assert "of ? devices" in text.splitlines()[0]
    assert "memory: unknown (a bare plan file has no model summary and cluster" in text
    assert rows(text, "3")[0][-3:] == ["?", "?", "?"]


def test_throughput_plan_shows_requests_per_second():
    from dataclasses import replace

    from galaxy.compiler.planner.assemble import with_prediction
    doc = pipeline()
    plan = with_prediction(replace(doc.plan, objective="throughput"), doc.cost_table())
    text = show_plan(PlanDocument(plan, doc.summary, doc.cluster, "pipeline"))
    line = next(line for line in text.splitlines() if line.startswith("predicted throughput"))
    assert f"{1 / plan.predicted_s_per_request:.2f} requests/s" in line and "through 2 stages" in line
    assert "predicted throughput" not in show_plan(doc)


def test_sequence_only_plan_shows_every_weight_of_the_model_on_each_rank():
    from galaxy.compiler.ir.plan import Plan, StageSplit
    from galaxy.compiler.ir.schedule import stage_schedule
    from report_fixtures import predicted
    doc = golden()
    stage = StageSplit((0, 1), 0, 12, (12, 12), (12, 12), (3072, 3072), (160, 96), stage_schedule(2, shape="sequence"))
    plan = predicted(Plan(doc.summary.name, doc.cluster.name, ("dev-a", "dev-b"), (stage,), "manual"), doc)
    text = show_plan(PlanDocument(plan, doc.summary, doc.cluster, "sequence"))
    assert rows(text, "0")[0][2:6] == ["12/12", "12/12", "3072/3072", "160/256"]
    assert rows(text, "1")[0][2:6] == ["12/12", "12/12", "3072/3072", "96/256"]
