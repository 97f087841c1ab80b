"""Load phase: MODEL path -> `LoadedModel` (an eval-mode nn.Module and its example inputs).

MODEL is one of three kinds:

| kind          | MODEL                                   | module                                  | example inputs                  |
|---------------|-----------------------------------------|-----------------------------------------|---------------------------------|
| model.py      | a Python file                           | `build_model(size)`                     | `example_inputs(size, seq_len)`:|
|               |                                         |                                         | a dict of keywords, or a tuple  |
|               |                                         |                                         | of positional inputs (forward's |
|               |                                         |                                         | parameter names)                |
| hf-config     | a config JSON file, or a folder holding | `AutoModel` / `AutoModelForCausalLM`    | `input_ids` [1, seq_len]        |
|               | only `config.json`                      | `.from_config`, random, seed 0          | (default 128 or the max), seed 0|
| hf-checkpoint | a folder with `config.json` and         | as hf-config, then the safetensors      | as hf-config                    |
|               | `*.safetensors`                         | weights                                 |                                 |

A `model.py` gets `size` and `seq_len` only when given; asking for one its functions do not take
is an error. HF models are built with `use_cache=False` and SDPA attention. The class follows
`config.architectures`: a causal-LM architecture (e.g. `LlamaForCausalLM`) gets
`AutoModelForCausalLM`, a masked-LM one (`BertForMaskedLM`) `AutoModelForMaskedLM`, anything else
(`BertModel`, `BertForSequenceClassification`) the base model via `AutoModel`. Without
`architectures`, decoder-only model types get the causal LM and the rest the base model.

Checkpoints: weights load from `*.safetensors` only (listed by `model.safetensors.index.json`
when present), one file at a time, and are cast to the model's fp32 parameters. Every parameter
must be found (tied weights, such as GPT-2's LM head, count as found through their twin), else
`ModelLoadError` lists the missing names. Checkpoint tensors the model has no place for (a task
head when building the base model, derived buffers such as old `rotary_emb.inv_freq`) are
ignored with a warning that lists them. Pickled weights (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`)
are never read: unpickling runs arbitrary code.

`materialize=False` builds HF models on the meta device (shapes only, no weights read), for
planning models too large for this machine; a `model.py` decides that itself (see
`models/llama.py`, size `70b`). Everything runs with HF_HUB_OFFLINE=1 and `local_files_only`:
loading never touches the network.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from galaxy.compiler.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_HF_SEQ_LEN = 128
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_INDEX = "model.safetensors.index.json"
_MAX_LISTED = 8  # names shown in a missing/unexpected-keys message


@dataclass(frozen=True, eq=False)
class LoadedModel:
    name: str
    source: str
    module: torch.nn.Module
    example_inputs: dict[str, torch.Tensor]
    kind: str  # "model.py" | "hf-config" | "hf-checkpoint"

    def __str__(self) -> str:
        params = sum(p.numel() for p in self.module.parameters())
        inputs = ", ".join(f"{k} {list(v.shape)} {str(v.dtype).removeprefix('torch.')}"
                           for k, v in self.example_inputs.items())
        return (f"{self.name} ({self.kind}, {type(self.module).__name__}, {params / 1e6:.1f} M params)"
                f" from {self.source}; inputs: {inputs}")


def load_model(source: str | os.PathLike, size: str | None = None, seq_len: int | None = None,
               *, materialize: bool = True) -> LoadedModel:
    """Load MODEL (a model.py, an HF config JSON or a local HF checkpoint folder); see the module doc."""
    path = Path(source)
    with _hub_offline():
        if not path.exists():
            raise ModelLoadError(f"MODEL {str(source)!r} does not exist; give a model.py, an HF config.json "
                                 f"or a local HF checkpoint folder")
        if path.is_file() and path.suffix == ".py":
            return _load_model_py(path, size, seq_len)
        if path.is_file() and path.suffix in PICKLE_SUFFIXES:
            raise ModelLoadError(_pickle_refusal(path, [path]))
        if path.is_file() and path.suffix == ".safetensors":
            raise ModelLoadError(f"MODEL {str(path)!r} is a weights file; pass the checkpoint folder "
                                 f"{str(path.parent)!r} (it must also hold config.json)")
        if path.is_file() and path.suffix == ".json":
            _reject_size(size, path)
            return _load_hf(path, path, seq_len, materialize, weights=[])
        if path.is_dir():
            _reject_size(size, path)
            return _load_hf_folder(path, seq_len, materialize)
        raise ModelLoadError(f"MODEL {str(path)!r} is not a .py file, a .json config or a folder; "
                             f"give a model.py, an HF config.json or a local HF checkpoint folder")


# --- model.py -------------------------------------------------------------------------------

def _load_model_py(path: Path, size: str | None, seq_len: int | None) -> LoadedModel:
    module = _import_by_path(path)
    build = _require_function(module, path, "build_model", "build_model(size: str = 'base') -> torch.nn.Module")
    make_inputs = _require_function(module, path, "example_inputs",
                                     "example_inputs(size: str = 'base', seq_len: int | None = None)"
                                     " -> dict[str, torch.Tensor]")
    build_kwargs = _optional_kwargs(build, path, size=size)
    input_kwargs = _optional_kwargs(make_inputs, path, seq_len=seq_len)
    if size is not None and _accepts(make_inputs, "size"):
        input_kwargs["size"] = size

    model = _call_user(path, build, build_kwargs)
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"{path}: build_model() returned {type(model).__name__}, not a torch.nn.Module")
    inputs = _call_user(path, make_inputs, input_kwargs)
    inputs = _check_inputs(path, _by_keyword(path, model, inputs))
    name = path.stem if size is None else f"{path.stem}-{size}"
    log.info("loaded %s from %s: build_model(%s)", name, path, _fmt_kwargs(build_kwargs))
    return LoadedModel(name=name, source=str(path), module=model.eval(), example_inputs=inputs, kind="model.py")


def _import_by_path(path: Path) -> Any:
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    module_name = f"galaxy_user_model_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, resolved)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path} as a Python module; check the file name ends in .py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    # Like running a script: the model file's folder is importable while it loads (helper modules).
    sys.path.insert(0, str(resolved.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        sys.modules.pop(module_name, None)
        raise ModelLoadError(f"importing {path} failed: {type(err).__name__}: {err}; fix the file "
                             f"(it must import cleanly with the venv's Python)") from err
    finally:
        sys.path.remove(str(resolved.parent))
    return module


def _require_function(module: Any, path: Path, name: str, signature: str) -> Callable:
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ModelLoadError(f"{path} defines no function {name}(); a model.py must define {signature}")
    return fn


def _accepts(fn: Callable, param: str) -> bool:
    params = inspect.signature(fn).parameters
    return param in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _optional_kwargs(fn: Callable, path: Path, **wanted: Any) -> dict[str, Any]:
    kwargs = {}
    for param, value in wanted.items():
        if value is None:
            continue
        if not _accepts(fn, param):
            raise ModelLoadError(f"{path}: {fn.__name__}() takes no {param!r} parameter, but {param}={value!r} "
                                 f"was asked for; drop that option or add the parameter to {fn.__name__}()")
        kwargs[param] = value
    return kwargs


def _call_user(path: Path, fn: Callable, kwargs: dict[str, Any]) -> Any:
    try:
        return fn(**kwargs)
    except Exception as err:
        raise ModelLoadError(f"{path}: {fn.__name__}({_fmt_kwargs(kwargs)}) raised {type(err).__name__}: "
                             f"{err}") from err


def _by_keyword(path: Path, model: torch.nn.Module, inputs: Any) -> Any:
    """A tuple of positional inputs (as torch.export takes them) as keywords: forward's parameter names."""
    if isinstance(inputs, torch.Tensor):
        inputs = (inputs,)
    if not isinstance(inputs, (tuple, list)):
        return inputs
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(inputs) > len(params):
        raise ModelLoadError(f"{path}: example_inputs() returned {len(inputs)} positional inputs, but "
                             f"{type(model).__name__}.forward takes {len(params)} "
                             f"({', '.join(p.name for p in params) or 'none'}); return fewer or a dict of keywords")
    return {p.name: value for p, value in zip(params, inputs)}


def _check_inputs(path: Path, inputs: Any) -> dict[str, torch.Tensor]:
    if not isinstance(inputs, dict) or not inputs:
        raise ModelLoadError(f"{path}: example_inputs() must return a non-empty dict of keyword inputs "
                             f"(name -> Tensor) or a tuple of positional ones, got {type(inputs).__name__}")
    for key, value in inputs.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelLoadError(f"{path}: example_inputs()[{key!r}] is a {type(value).__name__}; every entry "
                                 f"must map a forward() keyword to a torch.Tensor")
    return dict(inputs)


def _fmt_kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


# --- HF config / checkpoint -----------------------------------------------------------------

def _reject_size(size: str | None, path: Path) -> None:
    if size is not None:
        raise ModelLoadError(f"size {size!r} applies only to a model.py; {path} is an HF config or checkpoint "
                             f"whose config.json fixes the shape; drop the size option")


def _load_hf_folder(folder: Path, seq_len: int | None, materialize: bool) -> LoadedModel:
    config_path = folder / "config.json"
    pickled = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    weights = _safetensors_files(folder)
    if not config_path.is_file():
        raise ModelLoadError(f"folder {str(folder)!r} has no config.json; a checkpoint folder needs config.json "
                             f"next to its *.safetensors (or pass a model.py)")
    if not weights and pickled:
        raise ModelLoadError(_pickle_refusal(folder, pickled))
    if not weights:
        log.warning("%s holds config.json but no *.safetensors: building from the config with random weights",
                    folder)
    return _load_hf(folder, config_path, seq_len, materialize, weights)


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / SAFETENSORS_INDEX
    if not index.is_file():
        return sorted(folder.glob("*.safetensors"))
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ModelLoadError(f"{index} is not a valid safetensors index ({err}); repair it or remove it "
                             f"to load every *.safetensors in the folder") from err
    files = [folder / name for name in sorted(set(weight_map.values()))]
    absent = [str(f.name) for f in files if not f.is_file()]
    if absent:
        raise ModelLoadError(f"{index} names shards that are not in the folder: {absent}; copy them in")
    return files


def _pickle_refusal(where: Path, files: list[Path]) -> str:
    names = ", ".join(f.name for f in files[:_MAX_LISTED])
    return (f"{where} has only pickled weights ({names}); Galaxy never unpickles (it can run arbitrary code). "
            f"Convert them to safetensors where you trust them, e.g. "
            f"AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")


def _load_hf(source: Path, config_path: Path, seq_len: int | None, materialize: bool,
             weights: list[Path]) -> LoadedModel:
    config = _read_config(config_path)
    model_class = _hf_model_class(config)
    config.use_cache = False
    torch.manual_seed(0)
    device = torch.device("cpu") if materialize else torch.device("meta")
    with device:
        model = _from_config(model_class, config, config_path)
    kind = "hf-checkpoint" if weights else "hf-config"
    if weights and materialize:
        _load_safetensors(model, weights)
    elif weights:
        log.info("materialize=False: not reading the %d weight file(s) in %s", len(weights), source)
    inputs = _hf_inputs(config, config_path, seq_len, device)
    name = (source.parent if source.is_file() else source).resolve().name or config.model_type
    log.info("loaded %s (%s, %s) from %s", name, kind, type(model).__name__, source)
    return LoadedModel(name=name, source=str(source), module=model.eval(), example_inputs=inputs, kind=kind)


def _read_config(config_path: Path) -> Any:
    from transformers import AutoConfig

    try:
        raw = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{config_path} is not valid JSON ({err}); fix the file") from err
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ModelLoadError(f"{config_path} has no 'model_type' key; an HF config.json names its model type "
                             f"(e.g. \"model_type\": \"llama\")")
    if raw.get("auto_map"):
        raise ModelLoadError(f"{config_path} needs custom code (auto_map), which Galaxy does not run; "
                             f"write a model.py that builds the model instead")
    try:
        return AutoConfig.from_pretrained(str(config_path), local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        import transformers

        raise ModelLoadError(f"{config_path}: transformers {transformers.__version__} cannot read model type "
                             f"{raw['model_type']!r} ({str(err).splitlines()[0]}); upgrade transformers or "
                             f"write a model.py") from err


def _hf_model_class(config: Any) -> Any:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    architectures = set(getattr(config, "architectures", None) or [])
    if architectures & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()):
        return AutoModelForCausalLM
    if architectures & set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values()):
        return AutoModelForMaskedLM
    decoder_only = (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                    and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    return AutoModelForCausalLM if not architectures and decoder_only else AutoModel


def _from_config(model_class: Any, config: Any, config_path: Path) -> torch.nn.Module:
    try:
        return model_class.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    except ValueError as err:
        if "sdpa" not in str(err).lower() and "scaled_dot_product" not in str(err).lower():
            raise ModelLoadError(f"{config_path}: cannot build {config.model_type!r} with "
                                 f"{model_class.__name__} ({err}); write a model.py") from err
        log.warning("%s: model type %r has no SDPA attention; using eager attention, which the "
                    "recogniser may not find", config_path, config.model_type)
        return model_class.from_config(config, attn_implementation="eager", dtype=torch.float32)


def _hf_inputs(config: Any, config_path: Path, seq_len: int | None, device: torch.device) -> dict[str, torch.Tensor]:
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    seq = min(DEFAULT_HF_SEQ_LEN, max_positions or DEFAULT_HF_SEQ_LEN) if seq_len is None else seq_len
    if seq < 1 or (max_positions and seq > max_positions):
        raise ModelLoadError(f"seq_len {seq} is out of range 1..{max_positions} for {config_path}; "
                             f"choose a shorter sequence")
    vocab = getattr(config, "vocab_size", None)
    if not vocab:
        raise ModelLoadError(f"{config_path} has no vocab_size; Galaxy feeds HF models input_ids, so it needs "
                             f"one (or write a model.py with its own example_inputs)")
    if device.type == "meta":
        return {"input_ids": torch.zeros((1, seq), dtype=torch.int64, device=device)}
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, vocab, (1, seq), generator=generator, dtype=torch.int64)}


# --- safetensors weights --------------------------------------------------------------------

def _load_safetensors(model: torch.nn.Module, files: list[Path]) -> None:
    """Load every file's tensors into `model`; missing parameters are an error, extras a warning."""
    from safetensors.torch import load_file

    expected = model.state_dict(keep_vars=True)
    prefix = getattr(model, "base_model_prefix", "") or ""
    loaded: set[str] = set()
    unexpected: list[str] = []
    dtypes: set[torch.dtype] = set()
    for file in files:
        tensors = _rename_for(expected, load_file(str(file)), prefix)
        dtypes.update(t.dtype for t in tensors.values())
        ours = {k: v for k, v in tensors.items() if k in expected}
        unexpected.extend(k for k in tensors if k not in expected)
        try:
            model.load_state_dict(ours, strict=False)
        except RuntimeError as err:
            raise ModelLoadError(f"{file}: tensors do not fit the model built from config.json ({err}); "
                                 f"the config and the weights must come from the same checkpoint") from err
        loaded.update(ours)
    missing = _missing_after_ties(expected, loaded)
    parameters = dict(model.named_parameters(remove_duplicate=False))
    missing_parameters = [k for k in missing if k in parameters]
    if missing_parameters:
        raise ModelLoadError(f"checkpoint lacks {len(missing_parameters)} of the model's parameters: "
                             f"{_listing(missing_parameters)}; they would be random. Use a checkpoint "
                             f"that matches config.json")
    if missing:  # buffers only: constants the model computes when built (position ids, masks)
        log.warning("checkpoint lacks buffer(s) %s; keeping the values computed from config.json",
                    _listing(missing))
    if unexpected:
        log.warning("ignored %d checkpoint tensor(s) the model has no place for: %s",
                    len(unexpected), _listing(sorted(unexpected)))
    if dtypes - {torch.float32}:
        log.info("checkpoint dtype(s) %s cast to float32", sorted(str(d) for d in dtypes))
    log.info("loaded %d tensors from %d safetensors file(s)", len(loaded), len(files))


def _rename_for(expected: dict[str, Any], tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Match a base-model checkpoint to an LM model or the reverse, by the base-model prefix."""
    if not prefix or any(k in expected for k in tensors):
        return tensors
    dotted = prefix + "."
    if any(k.startswith(dotted) for k in tensors):  # e.g. BertForMaskedLM weights, BertModel built
        return {k.removeprefix(dotted): v for k, v in tensors.items()}
    if any(dotted + k in expected for k in tensors):  # e.g. LlamaModel weights, LlamaForCausalLM built
        return {(dotted + k if dotted + k in expected else k): v for k, v in tensors.items()}
    return tensors


def _missing_after_ties(expected: dict[str, Any], loaded: set[str]) -> list[str]:
    """Names not loaded, leaving out those that share storage with a loaded name (tied weights)."""
    loaded_storage = {id(expected[k]) for k in loaded}
    return sorted(k for k, t in expected.items() if k not in loaded and id(t) not in loaded_storage)


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous
