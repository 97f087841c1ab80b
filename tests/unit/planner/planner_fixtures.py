"""Shared data for planner tests: BERT-base and 70B-shaped summaries, clusters, random cost tables."""
from __future__ import annotations

import random
from typing import Iterator

from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.ir.cluster import Cluster, Device, Link
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.summary import ModelSummary
from summaries import bert_base_summary

GIB = 2 ** 30


def bert_base(seq_len: int = 256) -> ModelSummary:
    """BERT-base, fp32: hidden 768, 12 heads, intermediate 3072, 12 layers."""
    return bert_base_summary(seq_len)


def llama_70b(seq_len: int = 512) -> ModelSummary:
    """Llama-2-70B shape, fp16: 80 layers, hidden 8192, 64 heads, 8 KV heads, intermediate 28672."""
    H, V = 8192, 32000
    return ModelSummary(
        name="llama-70b", batch=1, seq_len=seq_len, hidden=H, n_layers=80, heads=64, kv_heads=8, head_dim=128,
        intermediate=28672, gated_mlp=True, attention_bias=False, mlp_bias=False, dtype_bytes=2,
        prologue_param_bytes=2 * V * H, prologue_flops=5.0 * seq_len * H,
        epilogue_param_bytes=2 * (V * H + H), epilogue_flops=2.0 * seq_len * H * V,
        connective_param_bytes_per_layer=2 * 2 * H)


def make_cluster(specs: list[tuple[str, float, float]], mbit_per_s: float = 1000.0, latency_s: float = 2e-4,
                 comm_cpu_s_per_byte: float = 5e-9, name: str = "test") -> Cluster:
    """specs: (name, memory GiB, GFLOP/s) per device; one link speed for every pair."""
    devices = tuple(Device(n, int(gib * GIB), gflops * 1e9, comm_cpu_s_per_byte=comm_cpu_s_per_byte)
                    for n, gib, gflops in specs)
    return Cluster(name, devices, Link(mbit_per_s * 1e6 / 8, latency_s))


EIGHT_DEVICES = [("ws1", 32, 200), ("ws2", 32, 150), ("lap1", 24, 100), ("lap2", 24, 100),
                 ("mini1", 16, 80), ("mini2", 16, 80), ("nuc1", 16, 50), ("nuc2", 16, 50)]


def random_table(rng: random.Random, n: int, groups: int = 2, units: int = 2, tokens: int = 3,
                 heads_per_group: int = 1, column_unit: int = 2, layers: int = 3, link_classes: int = 2,
                 symmetric: bool = True) -> CostTable:
    """A table of random costs (no model behind it), like Alpa's ILP tests."""
    def per_device(lo: float, hi: float) -> tuple[float, ...]:
        return tuple(rng.uniform(lo, hi) for _ in range(n))

    att = per_device(1e-3, 4e-3)
    mlp = per_device(1e-4, 4e-4)
    links = [(rng.uniform(1e-5, 5e-4), rng.uniform(1e-9, 4e-8)) for _ in range(link_classes)]
    pick = [[rng.randrange(link_classes) for _ in range(n)] for _ in range(n)]
    if symmetric:
        pick = [[pick[min(a, b)][max(a, b)] for b in range(n)] for a in range(n)]
    alpha = tuple(tuple(0.0 if a == b else links[pick[a][b]][0] for b in range(n)) for a in range(n))
    beta = tuple(tuple(0.0 if a == b else links[pick[a][b]][1] for b in range(n)) for a in range(n))
    w_group, w_col, replicated = 4000, 300, 2000
    full = layers * (groups * w_group + units * column_unit * w_col)
    return CostTable(
        model="random", cluster=f"random-{n}", devices=tuple(f"d{i}" for i in range(n)),
        n_layers=layers, kv_groups=groups, heads_per_group=heads_per_group, columns=units * column_unit,
        column_unit=column_unit, tokens=tokens, token_wire_bytes=rng.choice([3072, 30720]), wire_dtype="float32",
        flops_per_s=tuple(float(rng.choice([1, 2, 3])) for _ in range(n)),
        attention_s_per_group=att, attention_in_s_per_group=tuple(a * rng.uniform(0.2, 0.5) for a in att),
        attention_out_s_per_group=tuple(a * rng.uniform(0.1, 0.3) for a in att),
        mlp_s_per_column=mlp, mlp_in_s_per_column=tuple(m * rng.uniform(0.3, 0.5) for m in mlp),
        mlp_out_s_per_column=tuple(m * rng.uniform(0.3, 0.5) for m in mlp),
        connective_s_per_token=per_device(1e-5, 1e-4), prologue_s=per_device(0, 1e-3),
        epilogue_s=per_device(0, 2e-3), comm_cpu_s_per_byte=per_device(0, 2e-9),
        mem_bytes=tuple(int(rng.uniform(0.3, 1.5) * full) + replicated for _ in range(n)),
        alpha_s=alpha, beta_s_per_byte=beta,
        weight_bytes_per_group=w_group, weight_bytes_per_column=w_col, connective_bytes_per_layer=50,
        act_bytes_per_group=500, act_bytes_per_column=40, act_bytes_per_token=100, buffer_bytes=800,
        prologue_bytes=700, epilogue_bytes=rng.choice([0, 3000]),
        # GEMMs on fewer rows run slower, mildly (random tables have a few tokens): tiles cost a little
        gemm_rows_speed=tuple(((1, rng.uniform(0.8, 1.0)), (tokens, 1.0)) for _ in range(n)))


def every_pipeline(table: CostTable, max_group_devices: int) -> Iterator[Plan]:
    """The pipeline DP's search space, exhaustively: every sequence of disjoint stage groups in speed
    order, every split of the layers into them (>= 1 each); only plans that fit in memory."""
    from galaxy.compiler.cost.memory import memory_shortfall_bytes
    from galaxy.compiler.planner.brute_force import compositions
    from galaxy.compiler.planner.pipeline_dp import PipelineChoice, build_pipeline_plan
    from galaxy.compiler.planner.stage_groups import stage_groups

    groups = tuple(stage_groups(table, max_group_devices))

    def chains(after: int) -> Iterator[tuple[int, ...]]:
        for gi, group in enumerate(groups):
            if group.start >= after:
                yield (gi,)
                for rest in chains(group.end):
                    yield (gi, *rest)

    for chain in chains(0):
        if len(chain) > table.n_layers:
            continue
        for sizes in compositions(table.n_layers - len(chain), len(chain)):
            choice = PipelineChoice(groups, tuple((gi, n + 1) for gi, n in zip(chain, sizes)), 0.0)
            plan = build_pipeline_plan(table, choice, "throughput")
            if not memory_shortfall_bytes(plan, table):
                yield plan
