"""GPT-2 with its LM head (Hugging Face `GPT2LMHeadModel`) in the Galaxy `model.py` convention.

    build_model(size="base") -> torch.nn.Module     eval mode, use_cache=False, weights from torch.manual_seed(0)
    example_inputs(size="base", seq_len=None) -> {"input_ids": [1, seq] int64, seeded}

| size   | hidden | layers | heads | intermediate | vocab | default seq | params |
|--------|--------|--------|-------|--------------|-------|-------------|--------|
| tiny   | 96     | 2      | 6     | 384          | 512   | 32          | 0.3 M  |
| base   | 768    | 12     | 12    | 3072         | 50257 | 256         | 124 M  |  (GPT-2 "small")
| medium | 1024   | 24     | 16    | 4096         | 50257 | 256         | 355 M  |

The LM head shares its weight with the token embedding, as in GPT-2. The output is `logits`.
GPT-2's projections are HF `Conv1D`, so the exported graph shows them as aten.addmm on a
[seq, hidden] view (not aten.linear); only the LM head is aten.linear. The activation is
GPT-2's tanh GELU written out (pow, mul, add, tanh), not aten.gelu.
"""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SIZES: dict[str, dict] = {
    "tiny": dict(n_embd=96, n_layer=2, n_head=6, vocab_size=512, n_positions=128,
                 bos_token_id=511, eos_token_id=511),
    "base": dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024),
    "medium": dict(n_embd=1024, n_layer=24, n_head=16, vocab_size=50257, n_positions=1024),
}
DEFAULT_SEQ_LEN: dict[str, int] = {"tiny": 32, "base": 256, "medium": 256}


def _shape(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown GPT-2 size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


def build_model(size: str = "base") -> torch.nn.Module:
    config = GPT2Config(**_shape(size), use_cache=False, attn_implementation="sdpa")
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).eval()


def example_inputs(size: str = "base", seq_len: int | None = None) -> dict[str, torch.Tensor]:
    shape = _shape(size)
    seq = DEFAULT_SEQ_LEN[size] if seq_len is None else seq_len
    if not 1 <= seq <= shape["n_positions"]:
        raise ValueError(f"seq_len {seq} out of range 1..{shape['n_positions']} for GPT-2 {size}")
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(0, shape["vocab_size"], (1, seq), generator=generator, dtype=torch.int64)}
