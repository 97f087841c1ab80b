"""Bundles are reproducible byte for byte, and -o never deletes what is not a bundle."""
from __future__ import annotations

import shutil

import pytest

from galaxy.compiler.cli import compile_main
from helpers import MODELS


def _compile(model, out) -> int:
    return compile_main([str(model), "--size", "tiny", "--solver", "proportional", "-o", str(out)])


def _files(bundle) -> dict[str, bytes]:
    return {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}


def test_the_same_compile_in_two_checkouts_gives_identical_bundles(tmp_path):
    """Two copies of the model file in different folders, two output folders: every file of the
    bundles (modules, weights, plan.json, manifest, runtime copy) is the same, byte for byte."""
    bundles = []
    for checkout in ("one", "two/deeper"):
        model = tmp_path / checkout / "llama.py"
        model.parent.mkdir(parents=True)
        shutil.copyfile(MODELS / "llama.py", model)
        assert _compile(model, tmp_path / checkout / "bundle") == 0
        bundles.append(_files(tmp_path / checkout / "bundle"))
    assert list(bundles[0]) == list(bundles[1])
    different = [name for name in bundles[0] if bundles[0][name] != bundles[1][name]]
    assert not different
    for name, data in bundles[0].items():
        assert str(tmp_path).encode() not in data, f"{name} holds a host path"


def test_output_over_a_folder_that_is_not_a_bundle_is_refused(tmp_path, capsys):
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "thesis.txt").write_text("years of work")
    assert _compile(MODELS / "custom.py", precious) == 2
    assert "is not a Galaxy bundle" in capsys.readouterr().err
    assert (precious / "thesis.txt").read_text() == "years of work"

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert _compile(MODELS / "custom.py", a_file) == 2
    assert "is a file" in capsys.readouterr().err


@pytest.mark.parametrize("existing", ["bundle", "empty"])
def test_output_over_a_bundle_or_an_empty_folder_is_written(tmp_path, existing):
    out = tmp_path / "out"
    out.mkdir()
    if existing == "bundle":
        assert _compile(MODELS / "custom.py", out) == 0
        (out / "rank_9.py").write_text("left from an older plan")
    assert _compile(MODELS / "custom.py", out) == 0
    assert (out / "manifest.json").is_file() and not (out / "rank_9.py").exists()
