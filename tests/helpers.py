"""Shared test helpers: compile a bundled model with a given (hand-written) plan."""
from __future__ import annotations

from pathlib import Path

from galaxy.compiler.capture.load import load_model
from galaxy.compiler.capture.trace import capture
from galaxy.compiler.codegen.bundle import write_bundle
from galaxy.compiler.codegen.render import render_rank
from galaxy.compiler.ir.plan import Plan, StageSplit, validate_plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.lower.shard import lower
from galaxy.compiler.passes.recognise import recognise
from galaxy.compiler.passes.summarise import summarise
from galaxy.runtime.splits import split_sizes

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
# fp32 end to end; the only differences come from summation order in the reduce-scatter.
ATOL, RTOL = 1e-4, 1e-4


def captured_tiny(kind: str, seq_len: int | None = None):
    loaded = load_model(str(MODELS / f"{kind}.py"), size="tiny", seq_len=seq_len)
    captured = capture(loaded)
    graph = recognise(captured)
    return captured, graph, summarise(graph, captured)


def manual_plan(summary: ModelSummary, heads_weights, columns_weights, tokens_weights, tiles: int = 1,
                wire_dtype: str = "float32", sequence_parallel: bool = True) -> Plan:
    """A hand-written plan: shares proportional to the given per-rank weights (0 allowed).
    heads_weights=None (with columns_weights=None): sequence parallelism only."""
    n = len(tokens_weights)
    group = summary.heads // summary.kv_heads
    tensor_parallel = heads_weights is not None
    kv = split_sizes(summary.kv_heads, heads_weights) if tensor_parallel else [summary.kv_heads] * n
    columns = split_sizes(summary.intermediate, columns_weights) if tensor_parallel else [summary.intermediate] * n
    stage = StageSplit(
        ranks=tuple(range(n)), first_layer=0, end_layer=summary.n_layers,
        heads_per_rank=tuple(k * group for k in kv), kv_heads_per_rank=tuple(kv),
        columns_per_rank=tuple(columns),
        tokens_per_rank=tuple(split_sizes(summary.seq_len, tokens_weights)), tiles=tiles,
        sequence_parallel=sequence_parallel, tensor_parallel=tensor_parallel)
    plan = Plan(model=summary.name, cluster="manual", devices=tuple(f"dev{i}" for i in range(n)),
                stages=(stage,), solver="manual", wire_dtype=wire_dtype)
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len,
                  summary.n_layers)
    return plan


def build_bundle(out_dir, captured, graph, summary, plan: Plan, source: str = "test") -> Path:
    lowered = lower(graph, captured, plan, source)
    sources = {r.program.rank: render_rank(r.program) for r in lowered}
    document = {"format_version": 1, "plan": plan.to_json(), "model": summary.to_json(),
                "input_names": list(graph.input_names), "output_names": list(graph.output_names),
                "source": source}
    return write_bundle(out_dir, document, sources, {r.program.rank: r.weights for r in lowered},
                        captured.example_inputs, captured.reference_outputs)


def pipeline_plan(summary: ModelSummary, stages: list[tuple[int, list[float]]], tiles: int = 1) -> Plan:
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
            tokens_per_rank=tuple(split_sizes(summary.seq_len, weights)), tiles=tiles))
        first, next_rank = first + n_layers, next_rank + len(weights)
    plan = Plan(model=summary.name, cluster="manual", devices=tuple(f"dev{i}" for i in range(next_rank)),
                stages=tuple(splits), solver="manual")
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len,
                  summary.n_layers)
    return plan
