"""Reading (and, for the bundler and tests, writing) a bundle's files.

Layout (docs/ARCHITECTURE.md): plan.json, manifest.json {"format_version": 1, "files":
{relative posix path: sha256 hex}}, rank_<k>.py, weights/rank_<k>.safetensors,
inputs/example.safetensors, reference/outputs.safetensors, galaxy_runtime/.
Tensors are only ever read with safetensors, never pickle.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .errors import BundleIntegrityError, TensorFileError

FORMAT_VERSION = 1  # of plan.json and manifest.json
MANIFEST = "manifest.json"
PLAN = "plan.json"
RUNTIME_DIR = "galaxy_runtime"
EXAMPLE_INPUTS = "inputs/example.safetensors"
REFERENCE_OUTPUTS = "reference/outputs.safetensors"


def rank_module(rank: int) -> str:
    return f"rank_{rank}.py"


def rank_weights(rank: int) -> str:
    return f"weights/rank_{rank}.safetensors"


def decode_module(rank: int) -> str:
    """A generation bundle's decode step for `rank` (absent for a rank that sits decoding out)."""
    return f"decode_{rank}.py"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(bundle_dir: str | Path) -> dict[str, str]:
    """The manifest's {relative path: sha256}; BundleIntegrityError if absent or malformed."""
    data = _read_json(Path(bundle_dir), MANIFEST)
    files = data.get("files")
    if not isinstance(files, dict):
        raise BundleIntegrityError(MANIFEST, "has no 'files' table")
    return files


def write_manifest(bundle_dir: str | Path, files: Iterable[str] | None = None) -> dict[str, str]:
    """Hash `files` (relative paths; default: every file of the folder but the manifest and
    bytecode caches) and write manifest.json; returns the table."""
    bundle_dir = Path(bundle_dir)
    if files is None:
        files = [str(p.relative_to(bundle_dir)) for p in bundle_dir.rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts and p != bundle_dir / MANIFEST]
    table = {name: sha256_file(bundle_dir / name) for name in sorted(files)}
    text = json.dumps({"format_version": FORMAT_VERSION, "files": table}, indent=2, sort_keys=True)
    (bundle_dir / MANIFEST).write_text(text + "\n")
    return table


def rank_files(bundle_dir: str | Path, rank: int) -> list[str]:
    """The files rank `rank` needs: its module (and decode step), weights, plan.json and the runtime."""
    runtime = sorted(name for name in read_manifest(bundle_dir) if name.startswith(RUNTIME_DIR + "/"))
    if not runtime:
        raise BundleIntegrityError(RUNTIME_DIR, "manifest.json lists no runtime files")
    listed = read_manifest(bundle_dir)
    decode = [decode_module(rank)] if decode_module(rank) in listed else []
    return [rank_module(rank), *decode, rank_weights(rank), PLAN, *runtime]


def verify_manifest(bundle_dir: str | Path, files: Iterable[str]) -> None:
    """Check each of `files` exists and has the sha256 manifest.json records for it."""
    bundle_dir = Path(bundle_dir)
    table = read_manifest(bundle_dir)
    for name in files:
        if name not in table:
            raise BundleIntegrityError(name, "is not listed in manifest.json")
        path = bundle_dir / name
        if not path.is_file():
            raise BundleIntegrityError(name, f"is missing from {bundle_dir}")
        if sha256_file(path) != table[name]:
            raise BundleIntegrityError(name, "does not match its sha256 in manifest.json "
                                             "(altered or truncated)")


def load_plan(bundle_dir: str | Path) -> dict:
    """plan.json as a dict, after checking its format_version and the fields the runtime uses."""
    data = _read_json(Path(bundle_dir), PLAN)
    try:
        devices = data["plan"]["devices"]
        stages = [stage["ranks"] for stage in data["plan"]["stages"]]
    except (KeyError, TypeError) as exc:
        raise BundleIntegrityError(PLAN, f"lacks plan.devices or plan.stages[].ranks ({exc})") from exc
    ranks = sorted(r for stage in stages for r in stage)
    if not devices or ranks != list(range(len(devices))):
        raise BundleIntegrityError(PLAN, f"stages cover ranks {ranks}, expected each of "
                                         f"0..{len(devices) - 1} once")
    return data


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, by name."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise TensorFileError(f"cannot read tensors from {path}: {exc}") from exc


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write tensors by name to a safetensors file (parent folders are created)."""
    from safetensors.torch import save_file

    bad = [name for name, value in tensors.items() if not isinstance(value, torch.Tensor)]
    if bad:
        raise TensorFileError(f"cannot write {path}: {bad} are not tensors")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # clone: safetensors refuses tensors that share storage
        save_file({name: value.detach().contiguous().clone() for name, value in tensors.items()},
                  str(path))
    except OSError as exc:
        raise TensorFileError(f"cannot write tensors to {path}: {exc}") from exc


def _read_json(bundle_dir: Path, name: str) -> dict:
    path = bundle_dir / name
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BundleIntegrityError(name, f"is missing from {bundle_dir}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleIntegrityError(name, f"is not readable JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise BundleIntegrityError(name, "is not a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleIntegrityError(name, f"has format_version {version!r}; this runtime reads "
                                         f"{FORMAT_VERSION}")
    return data


def layer_weights(weights: Mapping[str, torch.Tensor], n_layers: int) -> list[dict[str, torch.Tensor]]:
    """One dict per layer: "layers.3.mlp.in.weight" -> result[3]["mlp.in.weight"]."""
    layers: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
    for key, tensor in weights.items():
        if key.startswith("layers."):
            _, index, name = key.split(".", 2)
            layers[int(index)][name] = tensor
    return layers


def import_module_file(path: Path, stem: str):
    """Import the generated module at `path` once per process, under a name unique to its file
    (several bundles, or a bundle's rank and decode modules, live side by side in one process)."""
    name = f"galaxy_bundle_{abs(hash(str(Path(path).resolve())))}_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
