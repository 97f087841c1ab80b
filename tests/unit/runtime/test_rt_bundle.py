"""Bundle reading: manifest checks, plan format, safetensors only."""
import json
import pickle

import pytest
import torch

from galaxy.runtime import bundle
from galaxy.runtime.errors import BundleIntegrityError, TensorFileError


@pytest.fixture
def small_bundle(tmp_path):
    (tmp_path / "rank_0.py").write_text("print('hi')\n")
    bundle.save_tensors(tmp_path / "weights/rank_0.safetensors", {"w": torch.ones(2)})
    plan = {"format_version": 1, "plan": {"devices": ["a"], "stages": [{"ranks": [0]}]}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    (tmp_path / "galaxy_runtime").mkdir()
    (tmp_path / "galaxy_runtime/entry.py").write_text("# runtime\n")
    bundle.write_manifest(tmp_path, ["rank_0.py", "weights/rank_0.safetensors", "plan.json",
                                     "galaxy_runtime/entry.py"])
    return tmp_path


def test_untouched_bundle_verifies(small_bundle):
    files = bundle.rank_files(small_bundle, 0)
    assert "galaxy_runtime/entry.py" in files and "weights/rank_0.safetensors" in files
    bundle.verify_manifest(small_bundle, files)


def test_tampered_file_names_the_file_and_the_fix(small_bundle):
    (small_bundle / "rank_0.py").write_text("print('evil')\n")
    with pytest.raises(BundleIntegrityError, match=r"rank_0\.py.*sha256.*re-copy") as info:
        bundle.verify_manifest(small_bundle, ["plan.json", "rank_0.py"])
    assert info.value.file == "rank_0.py"


def test_missing_and_unlisted_files(small_bundle):
    (small_bundle / "weights/rank_0.safetensors").unlink()
    with pytest.raises(BundleIntegrityError, match="missing"):
        bundle.verify_manifest(small_bundle, ["weights/rank_0.safetensors"])
    with pytest.raises(BundleIntegrityError, match="not listed"):
        bundle.verify_manifest(small_bundle, ["rank_1.py"])
    (small_bundle / "manifest.json").unlink()
    with pytest.raises(BundleIntegrityError, match="manifest.json"):
        bundle.verify_manifest(small_bundle, ["rank_0.py"])


def test_plan_format_version_is_checked(small_bundle):
    assert bundle.load_plan(small_bundle)["plan"]["devices"] == ["a"]
    (small_bundle / "plan.json").write_text(json.dumps({"format_version": 2, "plan": {}}))
    with pytest.raises(BundleIntegrityError, match="format_version 2"):
        bundle.load_plan(small_bundle)
    (small_bundle / "plan.json").write_text(json.dumps(
        {"format_version": 1, "plan": {"devices": ["a", "b"], "stages": [{"ranks": [0]}]}}))
    with pytest.raises(BundleIntegrityError, match="stages cover ranks"):
        bundle.load_plan(small_bundle)


def test_tensors_round_trip_and_pickles_are_refused(tmp_path):
    x = torch.arange(6.0).reshape(2, 3)
    tensors = {"x": x, "view": x[:, 1], "ids": torch.tensor([[1, 2]]), "mask": torch.tensor([True])}
    bundle.save_tensors(tmp_path / "t.safetensors", tensors)
    loaded = bundle.load_tensors(tmp_path / "t.safetensors")
    for name, value in tensors.items():
        torch.testing.assert_close(loaded[name], value, rtol=0, atol=0)
    (tmp_path / "p.safetensors").write_bytes(pickle.dumps({"x": x}))
    with pytest.raises(TensorFileError):
        bundle.load_tensors(tmp_path / "p.safetensors")
    with pytest.raises(TensorFileError):
        bundle.load_tensors(tmp_path / "absent.safetensors")
