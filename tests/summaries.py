"""Model summaries shared by the cost and planner tests (numbers only, no torch)."""
from __future__ import annotations

from galaxy.compiler.ir.summary import ModelSummary


def bert_base_summary(seq_len: int = 256) -> ModelSummary:
    H, V = 768, 30522
    return ModelSummary(
        name="bert-base", batch=1, seq_len=seq_len, hidden=H, n_layers=12, heads=12, kv_heads=12, head_dim=64,
        intermediate=3072, gated_mlp=False, attention_bias=True, mlp_bias=True, dtype_bytes=4,
        prologue_param_bytes=4 * ((V + 512 + 2) * H + 2 * H), prologue_flops=10.0 * seq_len * H,
        epilogue_param_bytes=4 * (H * H + H), epilogue_flops=2.0 * H * H,
        connective_param_bytes_per_layer=4 * 6 * H)


def llama_1b_summary(seq_len: int = 256) -> ModelSummary:
    """Llama-3.2-1B's shape, fp32 (GQA: 32 heads in 8 KV groups); seq_len 1 is a decode step's
    capture, whose head runs on one token."""
    H, V = 2048, 128256
    return ModelSummary(
        name="llama-1b" if seq_len > 1 else "llama-1b-decode", batch=1, seq_len=seq_len, hidden=H, n_layers=16,
        heads=32, kv_heads=8, head_dim=64, intermediate=8192, gated_mlp=True, attention_bias=False,
        mlp_bias=False, dtype_bytes=4, prologue_param_bytes=4 * V * H, prologue_flops=5.0 * seq_len * H,
        epilogue_param_bytes=4 * (V * H + H), epilogue_flops=2.0 * seq_len * H * V,
        connective_param_bytes_per_layer=4 * 2 * H)
