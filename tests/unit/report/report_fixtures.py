"""Plan documents for report tests: frozen golden plans (model summary + cluster + ILP plan), the same
problem planned by a baseline, and a hand-written two-stage pipeline."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from galaxy.compiler.cost import build_cost_table, predict
from galaxy.compiler.ir.schedule import StageSchedule
from galaxy.compiler.ir.plan import Plan, StageSplit
from galaxy.compiler.planner import make_plan
from galaxy.compiler.report import PlanDocument, read_plan_document

DATA = Path(__file__).resolve().parent / "data"  # frozen plan documents (see data/README.md)


def golden(name: str = "bert-base__four-uneven") -> PlanDocument:  # a frozen golden plan
    """bert-base on four-uneven: the ILP uses dev-a and dev-b (8/4 heads), tiles 4, 742.69 ms."""
    return replace(read_plan_document(DATA / f"{name}.json"), path=name)


def current(name: str = "bert-base__four-uneven") -> PlanDocument:
    """The frozen golden plan with the predictions of today's cost model (what a re-check sees)."""
    doc = golden(name)
    return replace(doc, plan=predicted(doc.plan, doc))


def baseline(doc: PlanDocument, solver: str = "even") -> PlanDocument:
    """The same model and cluster planned by a baseline (even: all four devices, 1506.97 ms)."""
    return PlanDocument(make_plan(doc.summary, doc.cluster, solver=solver), doc.summary, doc.cluster, solver)


def predicted(plan: Plan, doc: PlanDocument) -> Plan:
    latency, blocks = predict(plan, build_cost_table(doc.summary, doc.cluster))
    return replace(plan, predicted_latency_s=latency, predicted_blocks=blocks)


def pipeline() -> PlanDocument:
    """bert-base on four-uneven in two stages: layers 0-5 on dev-a/dev-b, 6-11 on dev-c/dev-d."""
    doc = golden()
    stages = (StageSplit((0, 1), 0, 6, (8, 4), (8, 4), (2048, 1024), (128, 128),
                         StageSchedule.parse("SCATTER | attn:AG(t2)>RS(t2) mlp:AG(t2)>RS(t2) | SEND")),
              StageSplit((2, 3), 6, 12, (8, 4), (8, 4), (2048, 1024), (160, 96),
                         StageSchedule.parse("RECV | attn:AG>RS mlp:AG>RS | SEND")))
    plan = Plan(doc.summary.name, doc.cluster.name, ("dev-a", "dev-b", "dev-c", "dev-d"), stages, "manual")
    return PlanDocument(predicted(plan, doc), doc.summary, doc.cluster, "pipeline")
