"""Golden plans: which cases, their files, re-planning them, and rewriting them on purpose.

A golden file `plans/<model>-<size>__<cluster>.json` is a plan document (what
`galaxy-compile --save-plan` writes): {"format_version", "model": ModelSummary, "cluster":
Cluster, "plan": Plan}. Storing the summary lets the default tests re-plan without exporting
the models; a slow test checks the summaries against the models.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner import make_plan
from galaxy.compiler.report import PlanDocument, diff_plans, read_plan_document
from galaxy.compiler.report.diff import cluster_differences, differences

ROOT = Path(__file__).resolve().parents[2]
PLANS = Path(__file__).resolve().parent / "plans"
UPDATE_HINT = "if the change is intended: python -m tests.golden.update (or pytest tests/golden --update-golden)"


@dataclass(frozen=True)
class Case:
    model: str  # models/<model>.py
    size: str
    cluster: str  # clusters/<cluster>.toml

    @property
    def name(self) -> str:
        return f"{self.model}-{self.size}__{self.cluster}"

    @property
    def model_path(self) -> Path:
        return ROOT / "models" / f"{self.model}.py"

    @property
    def cluster_path(self) -> Path:
        return ROOT / "clusters" / f"{self.cluster}.toml"

    def path(self, plans_dir: Path = PLANS) -> Path:
        return plans_dir / f"{self.name}.json"


# Tiny models fit anywhere and run alone; base models on the clusters made for them; 70b only
# where it fits. Each plans in well under a second, except 70b on eight devices (a few seconds).
CASES = (
    *(Case(model, "tiny", "home-3") for model in ("bert", "gpt2", "llama")),
    *(Case(model, "base", cluster) for model in ("bert", "gpt2")
      for cluster in ("home-3", "two-uneven", "four-uneven", "galaxy-paper")),
    *(Case("llama", "base", cluster)
      for cluster in ("home-3", "two-uneven", "four-uneven", "llama-3-uneven", "galaxy-paper")),
    Case("llama", "70b", "eight-devices"),
)


def replan(doc: PlanDocument) -> Plan:
    """Plan the stored summary on the stored cluster, as galaxy-compile does by default."""
    return make_plan(doc.summary, doc.cluster)


def derive(case: Case) -> PlanDocument:
    """What `galaxy-compile MODEL --size SIZE --cluster CLUSTER --plan-only` derives (exports the model)."""
    from galaxy.compiler.pipeline import CompileOptions, compile_model
    result = compile_model(str(case.model_path), CompileOptions(cluster=str(case.cluster_path), out_dir=None,
                                                                plan_only=True, size=case.size))
    return PlanDocument(result.plan, result.summary, result.cluster, f"{case.name} (derived)")


@functools.cache
def _derived_summary(model: str, size: str) -> ModelSummary:
    return derive(next(c for c in CASES if (c.model, c.size) == (model, size))).summary


def read(case: Case, plans_dir: Path = PLANS) -> PlanDocument | None:
    path = case.path(plans_dir)
    return read_plan_document(path) if path.exists() else None


def update(cases=CASES, derive_summaries: bool = False, plans_dir: Path = PLANS) -> list[str]:
    """Rewrite the golden files of `cases` (cluster from its TOML; summary stored, or derived if
    asked or missing) and return what changed, case by case."""
    report = []
    for case in cases:
        old = read(case, plans_dir)
        if derive_summaries or old is None:
            summary = _derived_summary(case.model, case.size)
        else:
            summary = old.summary
        cluster = load_cluster(case.cluster_path)
        new = PlanDocument(make_plan(summary, cluster), summary, cluster, f"{case.name} (re-planned)")
        report += [f"== {case.name}: {change(old, new)}"]
        if old is not None and old.dumps() != new.dumps():
            report += diff_plans(old, new).splitlines()
        plans_dir.mkdir(parents=True, exist_ok=True)
        new.save(case.path(plans_dir))
    return report


def change(old: PlanDocument | None, new: PlanDocument) -> str:
    if old is None:
        return "new golden file"
    if old.dumps() == new.dumps():
        return "unchanged"
    parts = []
    if old.summary != new.summary:
        parts.append("model summary: " + differences(old.summary.to_json(), new.summary.to_json()))
    if old.cluster != new.cluster:
        parts.append("cluster: " + cluster_differences(old.cluster, new.cluster))
    if old.plan.dumps() != new.plan.dumps():
        parts.append("plan changed")
    return "; ".join(parts) or "rewritten (format only)"
