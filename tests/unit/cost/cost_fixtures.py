"""Shared data for cost-model tests: a hand-sized two-device table and a BERT-base summary."""
from __future__ import annotations

from galaxy.compiler.cost.table import CostTable


def toy_table() -> CostTable:
    """Two devices with round numbers, so latencies can be computed by hand.

    A: 1 s per KV group (0.25 QKV, 0.125 out), 0.5 s per column (0.125 in, 0.125 out), 0.01 s per
    token, prologue 0.1 s, epilogue 0.2 s, 1e-4 s CPU per byte moved. B is exactly twice as slow.
    One link: alpha 0.01 s, beta 1e-4 s/byte. 2 layers, 2 groups, 4 columns, 4 tokens of 1000 B.
    GEMMs run as fast on one row as on four (a flat rows curve): token tiles cost no GEMM speed.
    """
    return CostTable(
        model="toy", cluster="toy2", devices=("A", "B"), n_layers=2, kv_groups=2, heads_per_group=1,
        columns=4, column_unit=2, tokens=4, token_wire_bytes=1000, wire_dtype="float32",
        flops_per_s=(2.0, 1.0),
        attention_s_per_group=(1.0, 2.0), attention_in_s_per_group=(0.25, 0.5),
        attention_out_s_per_group=(0.125, 0.25),
        mlp_s_per_column=(0.5, 1.0), mlp_in_s_per_column=(0.125, 0.25), mlp_out_s_per_column=(0.125, 0.25),
        connective_s_per_token=(0.01, 0.02), prologue_s=(0.1, 0.2), epilogue_s=(0.2, 0.4),
        comm_cpu_s_per_byte=(1e-4, 2e-4), mem_bytes=(10**6, 10**6),
        alpha_s=((0.0, 0.01), (0.01, 0.0)), beta_s_per_byte=((0.0, 1e-4), (1e-4, 0.0)),
        weight_bytes_per_group=1000, weight_bytes_per_column=100, connective_bytes_per_layer=10,
        act_bytes_per_group=50, act_bytes_per_column=5, act_bytes_per_token=3, buffer_bytes=7,
        prologue_bytes=20, epilogue_bytes=30, gemm_rows_speed=(((1, 1.0),),) * 2)

