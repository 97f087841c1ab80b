"""Golden plans: re-plan every stored case from its stored model summary and cluster, and
compare with the stored plan byte for byte (Plan.dumps) and by predicted latency.

A difference means the planner or the cost model now decides differently. If that is intended,
rewrite the files with `python -m tests.golden.update` (or `pytest tests/golden --update-golden`),
which prints a `galaxy-plan diff` of each change for the commit message.
"""
from __future__ import annotations

import json
import shutil

import pytest

from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.report import PlanDocument, diff_plans
from galaxy.compiler.report.diff import cluster_differences

from .golden_cases import CASES, PLANS, UPDATE_HINT, Case, read, replan, update


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden_plan(case: Case, update_golden: bool, golden_report: list[str]):
    if update_golden:
        golden_report.extend(update([case]))
        return
    stored = read(case)
    assert stored is not None, f"no golden file {case.path().relative_to(PLANS.parents[2])}; {UPDATE_HINT}"
    cluster = load_cluster(case.cluster_path)
    assert stored.cluster == cluster, (f"{case.cluster_path.name} changed since the golden file was written "
                                       f"({cluster_differences(stored.cluster, cluster)}); {UPDATE_HINT}")
    new = PlanDocument(replan(stored), stored.summary, stored.cluster, f"{case.name} (re-planned)")
    diff = diff_plans(stored, new)
    assert new.plan.predicted_latency_s == stored.plan.predicted_latency_s, f"{diff}\n{UPDATE_HINT}"
    assert new.plan.dumps() == stored.plan.dumps(), f"{diff}\n{UPDATE_HINT}"


def test_golden_files_are_the_cases():
    """No stale golden file is left behind when a case is removed."""
    assert sorted(p.stem for p in PLANS.glob("*.json")) == sorted(c.name for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden_plans_are_deterministic(case: Case):
    """Golden plans must come from a solve that finished, not one cut off by the time limit."""
    stored = read(case)
    assert stored is not None
    assert not [n for n in stored.plan.notes if "time limit" in n]


def test_update_rewrites_and_reports_the_change(tmp_path):
    """The deliberate path: a stale file is rewritten, and the report says what changed."""
    case = next(c for c in CASES if c.name == "llama-base__home-3")
    shutil.copy(case.path(), tmp_path)
    data = json.loads(case.path(tmp_path).read_text())
    data["plan"]["stages"][0]["schedule"] = "SCATTER | attn:AG(t3)>RS(t3) mlp:AG(t3)>RS(t3) | GATHER"  # no planner picks 3
    data["plan"]["predicted_latency_s"] = 9.0
    case.path(tmp_path).write_text(json.dumps(data))

    report = "\n".join(update([case], plans_dir=tmp_path))

    new = read(case, tmp_path)
    first = report.splitlines()[0]
    assert first.startswith("== llama-base__home-3: ") and first.endswith("plan changed")
    assert f"schedule: SCATTER | attn:AG(t3)>RS(t3) mlp:AG(t3)>RS(t3) | GATHER -> {new.plan.stages[0].schedule}" in report
    assert f"predicted latency: 9000.00 ms -> {new.plan.predicted_latency_s * 1e3:.2f} ms" in report
    assert new.plan == replan(new)
    assert update([case], plans_dir=tmp_path) == ["== llama-base__home-3: unchanged"]
