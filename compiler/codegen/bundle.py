"""Write a bundle: generated modules, weight shards, plan, runtime copy and a manifest.

    bundle/
      plan.json  manifest.json  rank_<k>.py  weights/rank_<k>.safetensors
      inputs/example.safetensors  reference/outputs.safetensors  galaxy_runtime/
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file

log = logging.getLogger(__name__)

BUNDLE_FORMAT_VERSION = 1


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_runtime(dest: Path) -> None:
    runtime = Path(str(resources.files("galaxy.runtime")))
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(runtime.glob("*.py")):
        shutil.copyfile(src, dest / src.name)


def write_bundle(out_dir: str | Path, plan_document: dict, sources: dict[int, str],
                 weights: dict[int, dict[str, torch.Tensor]], example_inputs: dict[str, torch.Tensor],
                 reference_outputs: dict[str, torch.Tensor]) -> Path:
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    (out / "weights").mkdir(parents=True)
    (out / "inputs").mkdir()
    (out / "reference").mkdir()
    (out / "plan.json").write_text(json.dumps(plan_document, indent=2, sort_keys=True) + "\n")
    for rank, source in sorted(sources.items()):
        (out / f"rank_{rank}.py").write_text(source)
        save_file(weights[rank], str(out / "weights" / f"rank_{rank}.safetensors"))
    save_file({k: v.contiguous() for k, v in example_inputs.items()}, str(out / "inputs" / "example.safetensors"))
    save_file({k: v.contiguous() for k, v in reference_outputs.items()},
              str(out / "reference" / "outputs.safetensors"))
    _copy_runtime(out / "galaxy_runtime")
    files = sorted(p for p in out.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    manifest = {"format_version": BUNDLE_FORMAT_VERSION,
                "files": {str(p.relative_to(out)): sha256_of(p) for p in files}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    size = sum(p.stat().st_size for p in files)
    log.info("wrote bundle %s: %d files, %.1f MiB", out, len(files), size / 2**20)
    return out
