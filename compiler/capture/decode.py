"""What generation needs from a model beyond its prefill capture: a causal LM, captured a second
time for one token at an explicit position.

    language_model(loaded)    -> LanguageModel (vocabulary, end-of-sequence token, longest
                                 position); raises GenerationError unless the model takes only
                                 `input_ids`, returns logits over a vocabulary, runs batch 1 and
                                 is causal (a later token never changes an earlier token's logits:
                                 what makes right-padding the prompt exact)
    decode_step_inputs(loaded) -> the same model with the inputs of one decode step:
                                 {"input_ids": [1, 1], "position_ids": [1, 1]}

The decode step is captured like any model (capture/trace.py): position_ids being an input,
its prologue computes the position tables (RoPE's cos and sin, GPT-2's position embedding)
from it rather than folding an arange. The attention of that graph is not used as captured:
codegen templates it with the key/value cache (templates/blocks.py.jinja).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from galaxy.compiler.capture.load import LoadedModel
from galaxy.compiler.errors import GenerationError

_CAUSALITY_TOKENS = 8  # a short prompt is enough to see whether later tokens leak backwards


@dataclass(frozen=True)
class LanguageModel:
    """What generation needs to know about a causal LM besides its graphs."""

    vocab_size: int
    eos_token_id: int | None  # generation may stop there
    max_positions: int | None  # the longest sequence its position embeddings cover (None: no limit known)


def language_model(loaded: LoadedModel) -> LanguageModel:
    """The model's vocabulary and limits; GenerationError naming what makes it unfit for generation."""
    config = getattr(loaded.module, "config", None)
    eos = getattr(config, "eos_token_id", None)
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return LanguageModel(_check_causal_lm(loaded), int(eos) if isinstance(eos, int) else None,
                         int(positions) if positions else None)


def _check_causal_lm(loaded: LoadedModel) -> int:
    """The model's vocabulary size; GenerationError naming what makes it unfit for generation."""
    inputs = loaded.example_inputs
    if set(inputs) != {"input_ids"}:
        raise GenerationError(f"{loaded.name} takes {sorted(inputs)}; generation feeds a causal language model "
                              "input_ids alone (a model with an LM head, e.g. GPT2LMHeadModel, LlamaForCausalLM)")
    ids = inputs["input_ids"]
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise GenerationError(f"{loaded.name}: input_ids is {list(ids.shape)}; generation runs one sequence "
                              "(batch 1): compile with example inputs of shape [1, seq]")
    if "position_ids" not in inspect.signature(loaded.module.forward).parameters:
        raise GenerationError(f"{type(loaded.module).__name__}.forward takes no position_ids; a decode step "
                              "runs one token at a given position, so the model must accept position_ids")
    if ids.device.type == "meta":
        raise GenerationError(f"{loaded.name} is built on the meta device (shapes only); generation needs weights")
    short = ids[:, :_CAUSALITY_TOKENS].clone()
    changed = short.clone()
    changed[0, -1] = (changed[0, -1] + 1) % _vocab_guess(loaded)
    with torch.inference_mode():
        first, second = (_logits(loaded, x) for x in (short, changed))
    if first.shape[-1] < 2 or first.shape[:2] != short.shape:
        raise GenerationError(f"{loaded.name} returns {list(first.shape)}; generation needs logits "
                              "[1, seq, vocab] (a model with an LM head)")
    if not torch.equal(first[:, :-1], second[:, :-1]):
        raise GenerationError(f"{loaded.name} is not causal: changing the last token changed the logits of "
                              "earlier ones, so a right-padded prompt would not give the same tokens; "
                              "generation needs a decoder-only causal language model")
    return int(first.shape[-1])


def decode_step_inputs(loaded: LoadedModel) -> LoadedModel:
    """`loaded` with the inputs of one decode step: one token at an explicit position."""
    ids = loaded.example_inputs["input_ids"]
    one = {"input_ids": ids[:, -1:].clone(), "position_ids": torch.full_like(ids[:, -1:], ids.shape[1] - 1)}
    return LoadedModel(f"{loaded.name}-decode", loaded.source, loaded.module, one, loaded.kind)


def _vocab_guess(loaded: LoadedModel) -> int:
    config = getattr(loaded.module, "config", None)
    return int(getattr(config, "vocab_size", 0) or 2)


def _logits(loaded: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    out = loaded.module(input_ids=ids)
    if isinstance(out, torch.Tensor):
        return out
    logits = out.get("logits") if isinstance(out, dict) else None
    if logits is None and isinstance(out, (tuple, list)):
        logits = out[0]
    if logits is None:
        raise GenerationError(f"{loaded.name} returns no logits; generation needs a model with an LM head")
    return logits
