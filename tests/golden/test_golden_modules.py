"""Golden generated modules: render every case and compare with the stored rank_<k>.py byte for byte
(tests/golden/modules/<case>/rank_<k>.py.golden).

A difference means codegen now writes other code. If that is intended, rewrite the files with
`python -m tests.golden.update` (or `pytest tests/golden --update-golden`) and review the diff.
"""
from __future__ import annotations

import difflib
import re

import pytest

from .module_cases import MODULE_CASES, MODULE_HINT, MODULES, ModuleCase, render, stored, update_modules


@pytest.mark.parametrize("case", MODULE_CASES, ids=lambda c: c.name)
def test_golden_module(case: ModuleCase, update_golden: bool, golden_report: list[str]):
    if update_golden:
        golden_report.extend(update_modules([case]))
        return
    old, new = stored(case), render(case)
    assert old, f"no golden modules in tests/golden/modules/{case.name}; {MODULE_HINT}"
    assert sorted(old) == sorted(new), f"ranks {sorted(old)} stored, {sorted(new)} generated; {MODULE_HINT}"
    for name in sorted(new):
        if old[name] != new[name]:
            diff = "".join(difflib.unified_diff(old[name].splitlines(True), new[name].splitlines(True),
                                                f"stored/{name}", f"generated/{name}", n=2))
            pytest.fail(f"{case.name}/{name} differs:\n{diff[:4000]}\n{MODULE_HINT}")


def test_golden_module_folders_are_the_cases():
    """No stale folder is left behind when a case is removed."""
    assert sorted(p.name for p in MODULES.iterdir() if p.is_dir()) == sorted(c.name for c in MODULE_CASES)


def test_update_rewrites_a_stale_module_and_reports_it(tmp_path):
    case = MODULE_CASES[0]
    update_modules([case], root=tmp_path)
    stale = case.folder(tmp_path) / "rank_1.py.golden"
    stale.write_text("# edited by hand\n")
    report = update_modules([case], root=tmp_path)
    assert report == [f"== modules/{case.name}: rewrote rank_1.py"]
    assert stale.read_text() == render(case)["rank_1.py"]
    assert update_modules([case], root=tmp_path) == [f"== modules/{case.name}: unchanged"]


FX_NAME = re.compile(r"\b(?:unsqueeze|slice|select|mul|add|sub|to|expand|view|linear|embedding|cat|neg|pow|mean"
                     r"|rsqrt|layer_norm|arange|index|getitem|alias|dropout)(?:_\d+)?\s*=")


@pytest.mark.parametrize("case", MODULE_CASES, ids=lambda c: c.name)
def test_generated_modules_read_like_hand_written_code(case: ModuleCase):
    """Torch code, values named by role: no aten calls, no fx node names bound, no 2**63 - 1 slice
    ends, provenance comments naming only emitted nodes."""
    for name, source in render(case).items():
        code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
        assert "aten." not in code, name
        assert "9223372036854775807" not in code, name
        assert not FX_NAME.search(code), f"{name}: {FX_NAME.search(code).group()}"
        assert "_assert_tensor_metadata" not in source and "dropout" not in source, name
