"""Bytes a device holds: per unit of split work, replicated, and for a whole plan.

Legend: B batch, S sequence, H hidden, d head dim, g query heads per KV group, e dtype bytes.

    weights per KV group   e (2 g + 2) H d  (+ e (g + 2) d biases)     per layer held
    weights per column     e (3 if gated else 2) H (+ e (2|1) biases)  per layer held
    activations per group  e B S d (2 g + 2) + 2 e B g S^2              one layer at a time
    activations per column e B S (3 if gated else 2)                   one layer at a time
    activations per token  3 e B H  (residual, norm output, reduce-scatter output)
    buffers                3 e B S H  (gathered input, partial output, ring receive chunk)
    prologue               prologue params + e B S H                   every rank of stage 0
    epilogue               epilogue params + e B S H + e outputs       rank 0 only
    connective             connective params per layer                 every rank, per layer held

A forward holds no KV cache. A generation bundle's ranks keep the keys and values of every
token of the context for each KV group of each layer they hold (`cache_bytes_per_group`,
counted with the group's weights by build_cost_table(..., cache_tokens=max_len)):

    cache per KV group     2 e B max_len d                                 per layer held
 Activation buffers of attention and MLP are summed (a safe bound on
the peak, and one linear row per device in the ILP). The epilogue's output size is estimated
from its FLOPs (an LM head does 2 H FLOPs per output element).

    mem[rank] = L_s (G w_g + C w_c + conn) + G a_g + C a_c + x a_t + buffers
                + prologue [rank in stage 0] + epilogue [rank 0]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from galaxy.compiler.ir.summary import ModelSummary

if TYPE_CHECKING:
    from galaxy.compiler.cost.table import CostTable
    from galaxy.compiler.ir.plan import Plan


@dataclass(frozen=True)
class LayerBytes:
    weight_per_group: int
    weight_per_column: int
    act_per_group: int
    act_per_column: int
    act_per_token: int
    buffers: int
    prologue: int
    epilogue: int
    connective_per_layer: int


def layer_bytes(m: ModelSummary) -> LayerBytes:
    e, g, d = m.dtype_bytes, m.heads_per_kv_group, m.head_dim
    mlp_mats = 3 if m.gated_mlp else 2
    seq_hidden = e * m.batch * m.seq_len * m.hidden
    outputs = int(m.epilogue_flops // (2 * m.hidden)) if m.hidden else 0
    return LayerBytes(
        weight_per_group=e * (2 * g + 2) * m.hidden * d + (e * (g + 2) * d if m.attention_bias else 0),
        weight_per_column=e * mlp_mats * m.hidden + (e * (mlp_mats - 1) if m.mlp_bias else 0),
        act_per_group=e * m.batch * m.seq_len * d * (2 * g + 2) + 2 * e * m.batch * g * m.seq_len ** 2,
        act_per_column=e * m.batch * m.seq_len * mlp_mats,
        act_per_token=3 * e * m.batch * m.hidden,
        buffers=3 * seq_hidden,
        prologue=m.prologue_param_bytes + seq_hidden,
        epilogue=m.epilogue_param_bytes + seq_hidden + e * outputs,
        connective_per_layer=m.connective_param_bytes_per_layer,
    )


def cache_bytes_per_group(m: ModelSummary, tokens: int) -> int:
    """Bytes of one layer's keys and values of one KV group for `tokens` tokens."""
    return 2 * m.dtype_bytes * m.batch * tokens * m.head_dim


def rank_memory_bytes(table: "CostTable", layers: int, groups: int, columns: int, tokens: int,
                      first_stage: bool, head: bool) -> int:
    """Bytes one rank holds: the formula in the module docstring."""
    return (layers * (groups * table.weight_bytes_per_group + columns * table.weight_bytes_per_column
                      + table.connective_bytes_per_layer)
            + groups * table.act_bytes_per_group + columns * table.act_bytes_per_column
            + tokens * table.act_bytes_per_token + table.buffer_bytes
            + (table.prologue_bytes if first_stage else 0) + (table.epilogue_bytes if head else 0))


def plan_memory_bytes(plan: "Plan", table: "CostTable") -> dict[str, int]:
    """Bytes each device of the plan holds, by device name."""
    out: dict[str, int] = {}
    for i, stage in enumerate(plan.stages):
        for j, rank in enumerate(stage.ranks):
            out[plan.devices[rank]] = rank_memory_bytes(
                table, len(stage.layers), stage.kv_heads_per_rank[j], stage.columns_per_rank[j],
                stage.tokens_per_rank[j], first_stage=(i == 0), head=(rank == 0))
    return out


def memory_shortfall_bytes(plan: "Plan", table: "CostTable") -> dict[str, int]:
    """Devices of the plan that hold more than they have, with by how many bytes."""
    need = plan_memory_bytes(plan, table)
    return {name: b - table.mem_bytes[table.index(name)]
            for name, b in sorted(need.items()) if b > table.mem_bytes[table.index(name)]}
