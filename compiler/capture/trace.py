"""Capture: nn.Module + example inputs -> an aten-level torch.fx GraphModule.

Hugging Face models are captured with `torch.export` (non-strict): its graph is a torch.fx
GraphModule whose placeholders are the parameters, buffers, constants and user inputs.
Plain modules may instead be traced with `torch.fx.symbolic_trace` first (it rejects
data-dependent Python control flow loudly); the traced module is then exported too, so every
later phase sees one vocabulary: aten ops with shapes in `node.meta["val"]`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.fx as fx
from torch.export.graph_signature import InputKind

from galaxy.compiler.capture.load import LoadedModel
from galaxy.compiler.errors import UntraceableModelError

log = logging.getLogger(__name__)


@dataclass
class CapturedModel:
    """The captured graph and everything needed to run a piece of it outside torch.export."""

    name: str
    graph_module: fx.GraphModule
    tensors: dict[str, torch.Tensor]  # placeholder name -> parameter/buffer/constant value
    fqns: dict[str, str]  # placeholder name -> state-dict name
    user_inputs: tuple[str, ...]  # placeholder names of the model inputs (= their keyword names)
    output_names: tuple[str, ...]  # names of the flattened outputs (e.g. last_hidden_state)
    example_inputs: dict[str, torch.Tensor]
    reference_outputs: dict[str, torch.Tensor]  # eager single-process outputs


def output_names_of(result) -> tuple[str, ...]:
    """Names for a model's flattened outputs: dict/ModelOutput keys, output_<i> for tuples."""
    if isinstance(result, torch.Tensor):
        return ("output",)
    if isinstance(result, dict):  # ModelOutput is an OrderedDict of its non-None fields
        return tuple(k for k, v in result.items() if v is not None)
    if isinstance(result, (tuple, list)):
        return tuple(f"output_{i}" for i in range(len(result)))
    raise UntraceableModelError(f"model returns {type(result).__name__}; return a tensor, tuple or dict")


def flatten_outputs(result, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return {"output": result}
    if isinstance(result, dict):
        return {k: result[k] for k in names}
    return dict(zip(names, result))


def capture(model: LoadedModel, method: str = "export") -> CapturedModel:
    """Trace `model` into an aten graph. `method` is "export" or "symbolic"."""
    module = model.module.eval()
    kwargs = dict(model.example_inputs)
    on_meta = any(p.is_meta for p in module.parameters())
    names, reference = (), {}
    if not on_meta:  # a model on the meta device (planning only) has no numbers to compare
        with torch.inference_mode():
            eager = module(**kwargs)
        names = output_names_of(eager)
        reference = {k: v.detach().clone() for k, v in flatten_outputs(eager, names).items()}

    if method == "symbolic":
        module = _symbolic_trace(module)
    elif method != "export":
        raise ValueError(f"unknown capture method {method!r}")
    try:
        exported = torch.export.export(module, (), kwargs, strict=False)
    except Exception as exc:  # torch raises many types; report the op torch names
        raise UntraceableModelError(
            f"torch.export could not capture {model.name}: {str(exc).splitlines()[0]}. "
            "Remove data-dependent control flow from forward() or mark it with torch.cond"
        ) from exc

    gm = exported.graph_module
    state = {**exported.state_dict, **exported.constants}
    tensors, fqns, user_inputs = {}, {}, []
    for spec in exported.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            user_inputs.append(spec.arg.name)
            continue
        tensors[spec.arg.name] = state[spec.target].detach()
        fqns[spec.arg.name] = spec.target
    flat_out = list(gm.graph.output_node().args[0])
    names = names or tuple(f"output_{i}" for i in range(len(flat_out)))
    if len(flat_out) != len(names):
        raise UntraceableModelError(f"export produced {len(flat_out)} outputs, eager run {len(names)}")
    log.info("captured %s: %d nodes, %d weights", model.name, len(gm.graph.nodes), len(tensors))
    missing = [name for name in user_inputs if name not in kwargs]
    if missing:  # export names user-input placeholders after the keyword arguments
        raise UntraceableModelError(f"captured inputs {missing} do not match example_inputs() keys "
                                    f"{list(kwargs)}")
    return CapturedModel(model.name, gm, tensors, fqns, tuple(user_inputs), names, kwargs, reference)


def _symbolic_trace(module: torch.nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(module)
    except Exception as exc:
        raise UntraceableModelError(
            f"torch.fx.symbolic_trace failed: {str(exc).splitlines()[0]}. "
            "Use --capture export for Hugging Face models, or remove data-dependent control flow"
        ) from exc
