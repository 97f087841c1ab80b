"""BERT encoder (Hugging Face `BertModel`, with pooler) in the Galaxy `model.py` convention.

    build_model(size="base") -> torch.nn.Module     eval mode, weights from torch.manual_seed(0)
    example_inputs(size="base", seq_len=None) -> dict[str, Tensor]
        input_ids [1, seq] int64 (seeded), attention_mask [1, seq] ones, token_type_ids [1, seq] zeros

| size  | hidden | layers | heads | intermediate | vocab | default seq | params |
|-------|--------|--------|-------|--------------|-------|-------------|--------|
| tiny  | 96     | 2      | 6     | 384          | 512   | 32          | 0.3 M  |
| base  | 768    | 12     | 12    | 3072         | 30522 | 256         | 109 M  |
| large | 1024   | 24     | 16    | 4096         | 30522 | 256         | 335 M  |

`tiny` has 6 heads so 3 or 4 devices get uneven head splits. All three trace with
`torch.export.export(model, (), example_inputs(...), strict=False)`; the graph keeps
aten.linear, aten.layer_norm and aten.scaled_dot_product_attention. The all-ones attention
mask becomes a boolean [1, 1, seq, seq] mask built in the prologue and passed to every SDPA.
"""
from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

SIZES: dict[str, dict] = {
    "tiny": dict(hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
                 intermediate_size=384, vocab_size=512, max_position_embeddings=128),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                 intermediate_size=3072, vocab_size=30522, max_position_embeddings=512),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, vocab_size=30522, max_position_embeddings=512),
}
DEFAULT_SEQ_LEN: dict[str, int] = {"tiny": 32, "base": 256, "large": 256}


def _shape(size: str) -> dict:
    if size not in SIZES:
        raise ValueError(f"unknown BERT size {size!r}; choose one of {sorted(SIZES)}")
    return SIZES[size]


def build_model(size: str = "base") -> torch.nn.Module:
    config = BertConfig(**_shape(size), attn_implementation="sdpa")
    torch.manual_seed(0)
    return BertModel(config).eval()


def example_inputs(size: str = "base", seq_len: int | None = None) -> dict[str, torch.Tensor]:
    shape = _shape(size)
    seq = DEFAULT_SEQ_LEN[size] if seq_len is None else seq_len
    if not 1 <= seq <= shape["max_position_embeddings"]:
        raise ValueError(f"seq_len {seq} out of range 1..{shape['max_position_embeddings']} for BERT {size}")
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, shape["vocab_size"], (1, seq), generator=generator, dtype=torch.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "token_type_ids": torch.zeros_like(input_ids),
    }
