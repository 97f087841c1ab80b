"""Plan documents: the --save-plan / bundle shape, bare plans, bundle directories, errors."""
from __future__ import annotations

import json

import pytest
from report_fixtures import golden

from galaxy.compiler.errors import PlanFileError
from galaxy.compiler.report import PlanDocument, read_plan_document


def test_document_round_trips_and_has_the_bundle_keys(tmp_path):
    doc = golden()
    doc.save(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert sorted(data) == ["cluster", "format_version", "model", "plan"]
    back = read_plan_document(tmp_path / "p.json")
    assert (back.plan, back.summary, back.cluster) == (doc.plan, doc.summary, doc.cluster)


def test_bundle_directory_reads_its_plan_json_with_extra_keys(tmp_path):
    data = {**golden().to_json(), "input_names": ["input_ids"], "output_names": ["x"], "source": "m.py"}
    (tmp_path / "plan.json").write_text(json.dumps(data))
    doc = read_plan_document(tmp_path)
    assert doc.plan == golden().plan and doc.cluster == golden().cluster


def test_bare_plan_has_no_summary_or_cluster(tmp_path):
    golden().plan.save(tmp_path / "bare.json")
    doc = read_plan_document(tmp_path / "bare.json")
    assert doc.plan == golden().plan
    assert doc.summary is None and doc.cluster is None and doc.cost_table() is None
    with pytest.raises(ValueError, match="needs the model summary"):
        doc.to_json()


def test_cost_table_uses_the_plan_wire_dtype():
    doc = golden()
    assert doc.cost_table().token_wire_bytes == 768 * 4
    from dataclasses import replace
    from galaxy.compiler.ir.schedule import stage_schedule
    stage = replace(doc.plan.stages[0], schedule=stage_schedule(2, tiles=4, wire="float16"))
    half = PlanDocument(replace(doc.plan, stages=(stage,)), doc.summary, doc.cluster)
    assert half.cost_table().token_wire_bytes == 768 * 2


@pytest.mark.parametrize("text, match", [("[1, 2]", "expected a JSON object"), ("{}", "no 'plan' key"),
                                         ("{not json", "cannot read plan"),
                                         ('{"plan": {"format_version": 1}}', "malformed plan")])
def test_bad_files_raise_plan_file_error_naming_the_file(tmp_path, text, match):
    (tmp_path / "p.json").write_text(text)
    with pytest.raises(PlanFileError, match=match) as err:
        read_plan_document(tmp_path / "p.json")
    assert "p.json" in str(err.value)
