"""build_cost_table: FLOPs, bytes and link numbers for BERT-base, checked against its shapes."""
from __future__ import annotations

import pytest
from summaries import bert_base_summary

from galaxy.compiler.cost.flops import ELEMENTWISE_WEIGHT, SOFTMAX_FLOPS_PER_SCORE
from galaxy.compiler.cost.table import build_cost_table, choose_column_unit
from galaxy.compiler.ir.cluster import DEFAULT_COMM_CPU_S_PER_BYTE, Cluster, Device, Link

BERT_LAYER_PARAMS = 7_087_872  # 4 H^2 + 4 H (attention) + 2 H I + I + H (MLP) + 4 H (2 layer norms)


def two_devices(link_override: bool = False) -> Cluster:
    devices = (Device("fast", 8 * 2**30, 20e9), Device("slow", 4 * 2**30, 10e9, comm_cpu_s_per_byte=1e-8))
    slow_link = (("fast", "slow", Link(12.5e6, 1e-3)),) if link_override else ()
    return Cluster("two", devices, Link(125e6, 2e-4), slow_link)


def test_bert_base_numbers():
    table = build_cost_table(bert_base_summary(), two_devices())
    assert (table.kv_groups, table.heads_per_group, table.column_unit, table.column_units) == (12, 1, 64, 48)
    assert table.token_wire_bytes == 768 * 4
    S, H, d = 256, 768, 64
    head_flops = 2 * S * H * d * 3 + 4 * S * S * d + SOFTMAX_FLOPS_PER_SCORE * ELEMENTWISE_WEIGHT * S * S \
        + 2 * S * d * H
    assert table.attention_s_per_group[0] == pytest.approx(head_flops / 20e9)
    assert table.attention_s_per_group[1] == pytest.approx(2 * table.attention_s_per_group[0])
    assert table.attention_in_s_per_group[0] == pytest.approx(2 * S * H * d * 3 / 20e9)
    assert table.mlp_in_s_per_column[0] == pytest.approx(2 * S * H / 20e9)
    layer_bytes = 12 * table.weight_bytes_per_group + 3072 * table.weight_bytes_per_column \
        + table.connective_bytes_per_layer
    assert layer_bytes == 4 * BERT_LAYER_PARAMS
    assert table.comm_cpu_s_per_byte == (DEFAULT_COMM_CPU_S_PER_BYTE, 1e-8)


def test_links_and_fp16_wire():
    table = build_cost_table(bert_base_summary(), two_devices(link_override=True), wire_dtype="float16")
    assert table.wire_dtype == "float16" and table.token_wire_bytes == 768 * 2
    assert table.alpha_s == ((0.0, 1e-3), (1e-3, 0.0))
    assert table.beta_s_per_byte[0][1] == pytest.approx(1 / 12.5e6)


def test_gqa_groups():
    summary = bert_base_summary()
    gqa = type(summary)(**{**summary.to_json(), "heads": 12, "kv_heads": 4})
    table = build_cost_table(gqa, two_devices())
    assert (table.kv_groups, table.heads_per_group, table.heads) == (4, 3, 12)


@pytest.mark.parametrize("columns,unit", [(3072, 64), (28672, 64), (64, 2), (37, 1), (96, 3)])
def test_column_unit_divides_and_keeps_enough_units(columns, unit):
    assert choose_column_unit(columns) == unit
