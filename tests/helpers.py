"""Shared test helpers: compile a bundled model with a given (hand-written) plan."""
from __future__ import annotations

from pathlib import Path

import torch

from galaxy.compiler.ir.plan import Plan, StageSplit, validate_plan
from galaxy.compiler.ir.schedule import gather_can_overlap, stage_schedule
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.pipeline import capture_model, write_plan_bundle
from galaxy.runtime.splits import split_sizes

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
# fp32 end to end; the only differences come from summation order in the reduce-scatter.
ATOL, RTOL = 1e-4, 1e-4


def captured_tiny(kind: str, seq_len: int | None = None):
    return capture_model(str(MODELS / f"{kind}.py"), "tiny", seq_len)


def manual_plan(summary: ModelSummary, heads_weights, columns_weights, tokens_weights, tiles: int = 1,
                wire_dtype: str = "float32", shape: str = "hybrid", key_values: str = "KVAG",
                algorithm: str = "ring") -> Plan:
    """A hand-written one-stage plan: shares proportional to the given per-rank weights (0 allowed),
    blocks run as `shape` (ir/schedule.py: hybrid, tensor or sequence). heads_weights=None (with
    columns_weights=None): sequence parallelism only, with the key/value action `key_values`."""
    n = len(tokens_weights)
    group = summary.heads // summary.kv_heads
    shape = "sequence" if heads_weights is None else shape
    if shape == "hybrid" and not gather_can_overlap(summary.parallel_block_inputs):
        tiles = 0
    kv = split_sizes(summary.kv_heads, heads_weights) if shape != "sequence" else [summary.kv_heads] * n
    columns = split_sizes(summary.intermediate, columns_weights) if shape != "sequence" else [summary.intermediate] * n
    tokens = split_sizes(summary.seq_len, tokens_weights) if shape != "tensor" else [summary.seq_len] * n
    stage = StageSplit(
        ranks=tuple(range(n)), first_layer=0, end_layer=summary.n_layers,
        heads_per_rank=tuple(k * group for k in kv), kv_heads_per_rank=tuple(kv),
        columns_per_rank=tuple(columns), tokens_per_rank=tuple(tokens),
        schedule=stage_schedule(n, shape=shape, tiles=tiles, wire=wire_dtype, parallel=summary.parallel_blocks,
                                key_values=key_values, algorithm=algorithm))
    plan = Plan(model=summary.name, cluster="manual", devices=tuple(f"dev{i}" for i in range(n)),
                stages=(stage,), solver="manual")
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len,
                  summary.n_layers)
    return plan


def build_bundle(out_dir, captured, graph, summary, plan: Plan, source: str = "test") -> Path:
    return write_plan_bundle(out_dir, plan, summary, graph, captured, source)


def pipeline_plan(summary: ModelSummary, stages: list[tuple[int, list[float]]], tiles: int = 1,
                  wire_dtype: str = "float32") -> Plan:
    """Stages of (layer count, per-rank weights): each stage splits its layers like manual_plan."""
    group = summary.heads // summary.kv_heads
    splits, first, next_rank = [], 0, 0
    for n_layers, weights in stages:
        ranks = tuple(range(next_rank, next_rank + len(weights)))
        kv = split_sizes(summary.kv_heads, weights)
        splits.append(StageSplit(
            ranks=ranks, first_layer=first, end_layer=first + n_layers,
            heads_per_rank=tuple(k * group for k in kv), kv_heads_per_rank=tuple(kv),
            columns_per_rank=tuple(split_sizes(summary.intermediate, weights)),
            tokens_per_rank=tuple(split_sizes(summary.seq_len, weights)),
            schedule=stage_schedule(len(weights), tiles=tiles, wire=wire_dtype, first=first == 0,
                                    last=first + n_layers == summary.n_layers, parallel=summary.parallel_blocks)))
        first, next_rank = first + n_layers, next_rank + len(weights)
    plan = Plan(model=summary.name, cluster="manual", devices=tuple(f"dev{i}" for i in range(next_rank)),
                stages=tuple(splits), solver="manual")
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len,
                  summary.n_layers)
    return plan


def request_inputs(example: dict[str, torch.Tensor], n: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """n different requests shaped like the example: other tokens; a padding mask where there is one."""
    generator = torch.Generator().manual_seed(1)
    requests = []
    for i in range(n):
        inputs = {"input_ids": torch.randint(0, vocab, example["input_ids"].shape, generator=generator)}
        if "attention_mask" in example:
            mask = torch.ones_like(example["attention_mask"])
            mask[:, mask.shape[1] - 3 * i:] = 0  # request i pads its last 3i tokens
            inputs["attention_mask"] = mask
        requests.append({**example, **inputs})
    return requests
