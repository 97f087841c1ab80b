"""galaxy-compile and galaxy-plan as a user runs them: exit codes and what they print.

The model is GPT-2 tiny (exports in well under a second); plans for bigger models come from
frozen copies of golden files (plan documents like the ones --save-plan writes).
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from galaxy.compiler import cli
from galaxy.compiler.cost import plan_memory_bytes
from galaxy.compiler.planner import SOLVERS
from galaxy.compiler.report import read_plan_document
from galaxy.compiler.report.text import gib

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "unit" / "report" / "data"  # frozen plan documents
MODEL = ["models/gpt2.py", "--size", "tiny", "--plan-only"]
HOME, FOUR = "clusters/home-3.toml", "clusters/four-uneven.toml"


def compile_(*args: str) -> int:
    return cli.compile_main([str(ROOT / MODEL[0]), *MODEL[1:], *args])


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The ILP plan of GPT-2 tiny on four-uneven (dev-a alone), saved by --save-plan."""
    path = tmp_path_factory.mktemp("ref") / "ref.json"
    assert compile_("--cluster", str(ROOT / FOUR), "--save-plan", str(path)) == 0
    return path


def test_solver_choices_are_every_solver_make_plan_supports():
    action = next(a for a in cli.compile_parser()._actions if a.dest == "solver")
    assert tuple(action.choices) == SOLVERS


@pytest.mark.parametrize("solver", [s for s in SOLVERS if s != "brute-force"])  # brute force: planner tests
def test_every_solver_runs_from_the_command_line(solver, capsys):
    assert compile_("--cluster", str(ROOT / "clusters/two-uneven.toml"), "--solver", solver) == 0
    assert f"plan for gpt2-tiny on two-uneven ({solver}, latency)" in capsys.readouterr().out


def test_save_plan_writes_the_plan_document(reference):
    data = json.loads(reference.read_text())
    assert sorted(data) == ["cluster", "format_version", "model", "plan"]
    assert data["model"]["name"] == "gpt2-tiny" and data["model"]["seq_len"] == 32
    assert data["cluster"]["name"] == "four-uneven"
    assert data["plan"]["devices"] == ["dev-a"]


def test_plan_option_reads_a_saved_document(reference, capsys):
    assert compile_("--cluster", str(ROOT / FOUR), "--plan", str(reference)) == 0
    assert "plan for gpt2-tiny on four-uneven (ilp, latency)" in capsys.readouterr().out


def test_check_against_the_same_plan_passes(reference, capsys):
    assert compile_("--cluster", str(ROOT / FOUR), "--check-against", str(reference)) == 0
    out = capsys.readouterr().out
    found = re.search(r"regression check passed: predicted latency ([\d.]+) ms vs ([\d.]+) ms of reference", out)
    assert found and found[1] == found[2]
    assert "(+0.0%, within +0%)" in out


def test_check_against_fails_on_a_worse_plan(reference, capsys):
    code = compile_("--cluster", str(ROOT / FOUR), "--solver", "even", "--check-against", str(reference),
                    "--max-regression", "5")
    err = capsys.readouterr().err.strip()
    assert code == 3
    assert len(err.splitlines()) == 1
    assert re.match(r"galaxy-compile: regression check failed: predicted latency [\d.]+ ms vs [\d.]+ ms of "
                    f"reference {reference} \\(\\+[\\d.]+%, more than", err)
    assert err.endswith("more than the allowed +5%)")


def test_check_against_a_generous_allowance_passes(reference):
    assert compile_("--cluster", str(ROOT / FOUR), "--solver", "even", "--check-against", str(reference),
                    "--max-regression", "1000000") == 0


def test_check_against_another_cluster_is_not_comparable(reference, capsys):
    code = compile_("--cluster", str(ROOT / HOME), "--check-against", str(reference))
    err = capsys.readouterr().err.strip()
    assert code == 4
    assert len(err.splitlines()) == 1
    assert "is not comparable: it was made for cluster four-uneven, not home-3" in err


def test_check_against_another_sequence_length_is_not_comparable(reference, capsys):
    assert compile_("--cluster", str(ROOT / FOUR), "--seq-len", "16", "--check-against", str(reference)) == 4
    err = capsys.readouterr().err
    assert "is not comparable: it was made for another model summary (" in err and "seq_len 32 -> 16" in err


def test_max_regression_needs_check_against(capsys):
    with pytest.raises(SystemExit) as exc:
        compile_("--max-regression", "5")
    assert exc.value.code == 2
    assert "--max-regression needs --check-against" in capsys.readouterr().err


def test_wire_sets_every_action_and_states_the_error_it_costs(tmp_path, capsys):
    path = tmp_path / "half.json"
    assert compile_("--solver", "proportional", "--wire", "float16", "--save-plan", str(path)) == 0
    out = capsys.readouterr().out
    assert "SCATTER(f16) | attn:AG(t0,f16)>RS(t0,f16) mlp:AG(t0,f16)>RS(t0,f16) | GATHER(f16)" in out
    assert re.search(r"wire float16: expected max abs error logits \d", out)
    document = read_plan_document(path)
    assert document.plan.wire_dtype == "float16" and document.wire_error["logits"] > 0


def test_wire_does_not_override_a_given_plan(reference, capsys):
    with pytest.raises(SystemExit):
        compile_("--plan", str(reference), "--wire", "bfloat16")
    assert "a --plan file already fixes each action's wire dtype" in capsys.readouterr().err


def test_unreadable_reference_is_an_input_error(tmp_path, capsys):
    assert compile_("--check-against", str(tmp_path / "missing.json")) == 2
    assert "cannot read plan" in capsys.readouterr().err


# --- galaxy-plan -------------------------------------------------------------------------------
def test_show_prints_shares_memory_blocks_and_notes(capsys):
    assert cli.plan_main(["show", str(DATA / "llama-base__home-3.json")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan for llama-base on home-3: ilp, latency objective, wire float32, 1 stage, "
                          "3 of 3 devices\npredicted latency 5856.20 ms per forward\n")
    assert "stage 0: layers 0-15 (16), 3 ranks, hybrid" in out
    assert "  schedule: SCATTER | attn:AG(t2)>RS(t2) mlp:AG(t2)>RS(t2) | GATHER" in out
    doc = read_plan_document(DATA / "llama-base__home-3.json")
    held = plan_memory_bytes(doc.plan, doc.cost_table())["tablet"]
    tablet = next(x for x in out.splitlines() if x.strip().startswith("2     tablet"))
    assert tablet.split() == ["2", "tablet", "8/32", "2/8", "2048/8192", "85/256", *gib(held).split(), "3.00", "GiB",
                              f"{held / 3 / 2**30:.0%}"]
    assert next(x for x in out.splitlines() if " mlp " in x).split()[:3] == ["0", "mlp", "x16"]
    assert next(x for x in out.splitlines() if x.strip().startswith("total")).split() == ["total", "5856.20",
                                                                                           "100%"]
    assert "why (planner notes):" in out and "in  tablet (rank 2, 3rd fastest" in out


def test_show_reads_a_bundle_directory(tmp_path, capsys):
    shutil.copy(DATA / "bert-base__four-uneven.json", tmp_path / "plan.json")
    assert cli.plan_main(["show", str(tmp_path)]) == 0
    assert "not used: dev-c (4.00 GiB), dev-d (2.00 GiB)" in capsys.readouterr().out


def test_show_png_writes_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "timeline.png"
    assert cli.plan_main(["show", str(DATA / "bert-base__four-uneven.json"), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"timeline written to {png}" in capsys.readouterr().out


def test_show_missing_file_is_one_line_on_stderr(tmp_path, capsys):
    assert cli.plan_main(["show", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("galaxy-plan: error: cannot read plan")


def test_diff_explains_and_exits_zero(reference, capsys):
    old, new = DATA / "llama-base__two-uneven.json", DATA / "llama-base__home-3.json"
    assert cli.plan_main(["diff", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "cluster: two-uneven -> home-3 (desktop added" in out
    assert "predicted latency: 6764.07 ms -> 5856.20 ms (-907.87 ms, -13.4%)" in out
    assert "devices added: desktop (rank 0), laptop (rank 1), tablet (rank 2)" in out
    assert "devices removed: fast (was rank 0), slow (was rank 1)" in out
    assert "schedule: SCATTER | attn:AG(t8)>RS(t8) mlp:AG(t8)>RS(t8) | GATHER -> SCATTER | attn:AG(t2)>RS(t2)" in out
    assert "predicted time per block per forward (ms):" in out


def test_diff_of_the_same_plan(capsys):
    path = str(DATA / "bert-base__four-uneven.json")
    assert cli.plan_main(["diff", path, path]) == 0
    assert capsys.readouterr().out.strip().endswith("the plans are identical")


def test_max_len_compiles_for_generation_and_show_prints_both_plans(tmp_path, capsys):
    saved = tmp_path / "generate.json"
    assert compile_("--cluster", str(ROOT / HOME), "--solver", "even", "--max-len", "48",
                    "--save-plan", str(saved)) == 0
    out = capsys.readouterr().out
    assert re.search(r"predicted time to first token [\d.]+ ms, time per token [\d.]+ ms", out)
    assert cli.plan_main(["show", str(saved)]) == 0
    shown = capsys.readouterr().out
    for expected in ("for the prefill (a whole prompt)", "memory includes the key/value cache of 48 tokens",
                     "decode plan (one token a step", "kv cache", "decode layouts priced", "why this decode layout:"):
        assert expected in shown, expected
    assert read_plan_document(saved).generation.max_len == 48


def test_generation_errors_name_the_fix(capsys):
    assert compile_("--max-len", "100000") == 2
    assert "--max-len 100000 is beyond the model's 128 positions; choose at most 128" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compile_("--decode", "keep")
    assert "--decode applies to generation bundles: give --max-len N too" in capsys.readouterr().err


def test_min_gain_is_a_percentage(capsys):
    from galaxy.compiler.cli import compile_main
    with pytest.raises(SystemExit):
        compile_main(["models/gpt2.py", "--min-gain", "100"])
    assert "--min-gain must be a percentage in [0, 100)" in capsys.readouterr().err
