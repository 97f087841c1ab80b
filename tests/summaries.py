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
