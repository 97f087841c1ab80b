"""Write a bundle: generated modules, weight shards, plan, runtime copy and a manifest.

    bundle/
      plan.json  manifest.json  rank_<k>.py  [decode_<k>.py]  weights/rank_<k>.safetensors
      inputs/example.safetensors  reference/outputs.safetensors  galaxy_runtime/

File names and the manifest format come from the runtime (galaxy.runtime.bundle), which reads
them back on every device.
"""
from __future__ import annotations

import json
import logging
import shutil
from importlib import resources
from pathlib import Path

import torch

from galaxy.compiler.errors import OutputDirError
from galaxy.runtime import bundle as layout

log = logging.getLogger(__name__)


def _copy_runtime(dest: Path) -> None:
    runtime = Path(str(resources.files("galaxy.runtime")))
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(runtime.glob("*.py")):
        shutil.copyfile(src, dest / src.name)


def check_output_dir(out_dir: str | Path) -> None:
    """Raise OutputDirError unless `out_dir` is free to (re)write: absent, an empty folder, or a
    Galaxy bundle (plan.json and manifest.json), which is replaced whole."""
    out = Path(out_dir)
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputDirError(f"output {str(out)!r} is a file, not a bundle folder; choose another -o DIR")
    is_bundle = (out / layout.PLAN).is_file() and (out / layout.MANIFEST).is_file()
    if not is_bundle and any(out.iterdir()):
        raise OutputDirError(f"output folder {str(out)!r} exists and is not a Galaxy bundle (no {layout.PLAN} "
                             f"and {layout.MANIFEST}); galaxy-compile replaces only bundles: choose another -o "
                             "DIR or empty it")


def write_bundle(out_dir: str | Path, plan_document: dict, sources: dict[int, str],
                 weights: dict[int, dict[str, torch.Tensor]], example_inputs: dict[str, torch.Tensor],
                 reference_outputs: dict[str, torch.Tensor], decode_sources: dict[int, str] | None = None) -> Path:
    """The bundle folder; `decode_sources` are a generation bundle's decode steps (decode_<k>.py)."""
    out = Path(out_dir)
    check_output_dir(out)
    if out.exists():
        shutil.rmtree(out)
    for folder in ("weights", "inputs", "reference"):
        (out / folder).mkdir(parents=True)
    (out / layout.PLAN).write_text(json.dumps(plan_document, indent=2, sort_keys=True) + "\n")
    for rank, source in sorted(sources.items()):
        (out / layout.rank_module(rank)).write_text(source)
        layout.save_tensors(out / layout.rank_weights(rank), weights[rank])
    for rank, source in sorted((decode_sources or {}).items()):
        (out / layout.decode_module(rank)).write_text(source)
    layout.save_tensors(out / layout.EXAMPLE_INPUTS, example_inputs)
    layout.save_tensors(out / layout.REFERENCE_OUTPUTS, reference_outputs)
    _copy_runtime(out / layout.RUNTIME_DIR)
    table = layout.write_manifest(out)
    size = sum((out / name).stat().st_size for name in table)
    log.info("wrote bundle %s: %d files, %.1f MiB", out, len(table), size / 2**20)
    return out
