"""Slow: the stored model summaries are still what `galaxy-compile --plan-only` derives from the
models (this exports every model; llama base takes about a minute). Run with `pytest -m slow`."""
from __future__ import annotations

import json

import pytest

from galaxy.compiler.cli import compile_main
from galaxy.compiler.report import read_plan_document
from galaxy.compiler.report.diff import differences

from .golden_cases import CASES, UPDATE_HINT, Case, read

FIRST_CASE_PER_MODEL = {(c.model, c.size): c for c in reversed(CASES)}  # one export per model and size


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", sorted(FIRST_CASE_PER_MODEL.values(), key=CASES.index), ids=lambda c: c.name)
def test_stored_summary_is_what_galaxy_compile_derives(case: Case, tmp_path):
    saved = tmp_path / "plan.json"
    argv = [str(case.model_path), "--size", case.size, "--cluster", str(case.cluster_path), "--plan-only",
            "--save-plan", str(saved)]
    assert compile_main(argv) == 0
    derived, stored = read_plan_document(saved), read(case)
    assert derived.summary == stored.summary, (
        f"models/{case.model}.py {case.size} now summarises differently: "
        f"{differences(stored.summary.to_json(), derived.summary.to_json())}; "
        f"{UPDATE_HINT.replace('update', 'update --derive', 1)}")
    assert derived.plan.dumps() == stored.plan.dumps()
    assert json.loads(saved.read_text())["format_version"] == 1
