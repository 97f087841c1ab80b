"""FLOPs of one Transformer layer, per unit of work the planner splits.

Units: one KV group of attention (its `heads_per_kv_group` query heads plus one K and one V
head), one MLP intermediate column, one token of the connective blocks. Every count is for
the whole batch x sequence of one layer (prefill, no KV cache).

Legend: B batch, S sequence length, H hidden, d head dim, g query heads per KV group.

    attention in   (Q, K, V projections)   2 B S H d (g + 2)
    attention core (scores, softmax, ctx)  4 B S^2 d g + SOFTMAX B S^2 g   (elementwise weighted)
    attention out  (output projection)     2 B S d g H
    mlp in         (up, + gate if gated)   2 B S H (2 if gated else 1)      per column
    mlp act        (activation, gate mul)  ACT B S                           per column
    mlp out        (down projection)       2 B S H                           per column
    connective     (2 x residual + norm)   CONNECTIVE B H                    per token

Elementwise work is memory-bound on CPUs, so it is charged at ELEMENTWISE_WEIGHT GEMM FLOPs per
FLOP: `Device.flops_per_s` is a GEMM rate.
"""
from __future__ import annotations

from dataclasses import dataclass

from galaxy.compiler.ir.summary import ModelSummary

ELEMENTWISE_WEIGHT = 10.0  # GEMM-FLOP equivalents per elementwise FLOP (memory-bound)
SOFTMAX_FLOPS_PER_SCORE = 5.0  # max, sub, exp, sum, div
ACT_FLOPS_PER_ELEMENT = 8.0  # GELU/SiLU, plus the gate multiply when gated
CONNECTIVE_FLOPS_PER_ELEMENT = 20.0  # two blocks of residual add + bias + layer/RMS norm


@dataclass(frozen=True)
class LayerFlops:
    """FLOPs (GEMM-equivalent) of one layer per unit of split work."""

    attention_in_per_group: float  # overlappable with the AllGather before attention
    attention_core_per_group: float
    attention_out_per_group: float  # overlappable with the ReduceScatter after attention
    mlp_in_per_column: float  # overlappable with the AllGather before the MLP
    mlp_act_per_column: float
    mlp_out_per_column: float  # overlappable with the ReduceScatter after the MLP
    connective_per_token: float

    @property
    def attention_per_group(self) -> float:
        return self.attention_in_per_group + self.attention_core_per_group + self.attention_out_per_group

    @property
    def mlp_per_column(self) -> float:
        return self.mlp_in_per_column + self.mlp_act_per_column + self.mlp_out_per_column


def layer_flops(m: ModelSummary) -> LayerFlops:
    tokens = m.batch * m.seq_len
    g = m.heads_per_kv_group
    d = m.head_dim
    scores = m.batch * m.seq_len * m.seq_len * g
    return LayerFlops(
        attention_in_per_group=2.0 * tokens * m.hidden * d * (g + 2),
        attention_core_per_group=4.0 * scores * d + SOFTMAX_FLOPS_PER_SCORE * ELEMENTWISE_WEIGHT * scores,
        attention_out_per_group=2.0 * tokens * d * g * m.hidden,
        mlp_in_per_column=2.0 * tokens * m.hidden * (2 if m.gated_mlp else 1),
        mlp_act_per_column=ACT_FLOPS_PER_ELEMENT * ELEMENTWISE_WEIGHT * tokens,
        mlp_out_per_column=2.0 * tokens * m.hidden,
        connective_per_token=CONNECTIVE_FLOPS_PER_ELEMENT * ELEMENTWISE_WEIGHT * m.batch * m.hidden,
    )
