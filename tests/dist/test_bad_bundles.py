"""A compiled bundle refuses tampered files and wrong inputs with a message naming the cause."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from helpers import build_bundle, captured_tiny, manual_plan

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    captured, graph, summary = captured_tiny("gpt2")
    plan = manual_plan(summary, [1, 1], [1, 1], [1, 1])
    return build_bundle(tmp_path_factory.mktemp("b") / "bundle", captured, graph, summary, plan)


def _galaxy_run(bundle, *extra):
    cmd = [sys.executable, "-m", "galaxy.host.launcher", str(bundle), "--local", "--timeout", "30", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_tampered_weight_file_is_named(bundle, tmp_path):
    import shutil
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    weights = copy / "weights" / "rank_1.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    run = _galaxy_run(copy)
    assert run.returncode != 0
    assert "weights/rank_1.safetensors" in run.stderr and "sha256" in run.stderr.lower()


def test_missing_rank_module_is_named(bundle, tmp_path):
    import shutil
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "rank_1.py").unlink()
    run = _galaxy_run(copy)
    assert run.returncode != 0 and "rank_1.py" in run.stderr


def test_input_of_the_wrong_length_is_refused(bundle, tmp_path):
    wrong = tmp_path / "in.safetensors"
    save_file({"input_ids": torch.zeros(1, 7, dtype=torch.long)}, str(wrong))
    run = _galaxy_run(bundle, "--input", str(wrong))
    assert run.returncode != 0
    assert "compiled for [1, 32]" in run.stderr and "--seq-len 7" in run.stderr


def test_good_bundle_runs_and_matches(bundle):
    run = _galaxy_run(bundle)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "max abs error" in run.stdout
