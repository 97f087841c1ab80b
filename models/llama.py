"""Llama decoder (Hugging Face `LlamaForCausalLM`) in the Galaxy `model.py` convention.

    build_model(size="base") -> torch.nn.Module     eval mode, use_cache=False, weights from torch.manual_seed(0)
    example_inputs(size="base", seq_len=None) -> {"input_ids": [1, seq] int64, seeded}

Grouped-query attention (fewer KV heads than query heads), rotary position embeddings,
RMSNorm and the gated SiLU MLP, as in Llama 3.

| size | hidden | layers | heads | KV heads | intermediate | vocab  | default seq | params | shape of        |
|------|--------|--------|-------|----------|--------------|--------|-------------|--------|-----------------|
| tiny | 96     | 2      | 6     | 3        | 256          | 512    | 32          | 0.3 M  | (tests)         |
| base | 2048   | 16     | 32    | 8        | 8192         | 128256 | 256         | 1.24 B | Llama-3.2-1B    |
| 70b  | 8192   | 80     | 64    | 8        | 28672        | 128256 | 256         | 70.6 B | Llama-3.1-70B   |

`tiny` has 3 KV groups of 2 heads, so 3 devices can each hold one whole group (GQA splits
whole KV groups) and 4 devices give an uneven split with one device holding none.

`base` is the real Llama-3.2-1B shape (tied embeddings, llama3 RoPE scaling). It runs on a
CPU but is not small: 4.9 GB of fp32 weights, about 30 s to build (random init) and about
9 s for one 256-token forward on one core of the development machine.

`70b` is the Llama-3.1-70B shape (282 GB in fp32, 141 GB in fp16). `build_model(size="70b")`
constructs it under `torch.device("meta")`, so weights are never materialised (it builds in
well under a second and takes no memory); `example_inputs(size="70b")` returns meta tensors
to match. It exists for planning (`galaxy-compile ... --plan-only`); torch.export traces it
on meta (about 8 s), but it cannot run.
"""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=3,
                 intermediate_size=256, vocab_size=512, max_position_embeddings=128,
                 rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}),
    "base": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                 intermediate_size=8192, vocab_size=128256, max_position_embeddings=131072,
                 rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=128000, eos_token_id=128001,
                 rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                  "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 8192}),
    "70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                intermediate_size=28672, vocab_size=128256, max_position_embeddings=131072,
                rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
                rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192}),
}
DEFAULT_SEQ_LEN: dict[str, int] = {"tiny": 32, "base": 256, "70b": 256}
META_ONLY = frozenset({"70b"})  # sizes built on the meta device: shapes only, never weights


def _shape(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown Llama size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


def _device(size: str) -> torch.device:
    return torch.device("meta") if size in META_ONLY else torch.device("cpu")


def build_model(size: str = "base") -> torch.nn.Module:
    config = LlamaConfig(**_shape(size), use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    with _device(size):
        model = LlamaForCausalLM(config)
    return model.eval()


def example_inputs(size: str = "base", seq_len: int | None = None) -> dict[str, torch.Tensor]:
    shape = _shape(size)
    seq = DEFAULT_SEQ_LEN[size] if seq_len is None else seq_len
    if not 1 <= seq <= shape["max_position_embeddings"]:
        raise ValueError(f"seq_len {seq} out of range 1..{shape['max_position_embeddings']} for Llama {size}")
    if size in META_ONLY:
        return {"input_ids": torch.zeros((1, seq), dtype=torch.int64, device="meta")}
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, shape["vocab_size"], (1, seq), generator=generator, dtype=torch.int64)}
