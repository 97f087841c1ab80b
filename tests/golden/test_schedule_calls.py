"""One walk: the collectives the cost model charges are the collectives the generated modules call.

For every golden plan and every benchmark variant (on the benchmark clusters), the sequence of
actions `predict()` charged (BlockTime.actions, repeated per layer) must equal, rank by rank,
the sequence of runtime calls the generated module makes, read from its AST by `called()` below,
a small interpreter that follows calls into the module's own functions and repeats a layer loop
`for w in layers[a:b]` b - a times.

Golden plans are made for base-size models (and Llama-70B), too large to export here, so each is
retargeted onto a tiny model of the same family with the same number of layers (`retarget`):
every stage keeps its ranks, layers and schedule, and its per-rank shares are rescaled to the tiny
model's heads, columns and tokens (zero stays zero). What a module calls depends only on those.
"""
from __future__ import annotations

import ast
import functools
from dataclasses import replace
from pathlib import Path

import pytest

from galaxy.compiler.codegen.render import render_rank
from galaxy.compiler.cost.latency import predict
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.plan import Plan, validate_plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.lower.shard import lower
from galaxy.compiler.pipeline import capture_model
from galaxy.runtime.splits import split_sizes

from .golden_cases import CASES, ROOT, read

# The runtime call that carries each action (the oracle of this test, written independently of the
# templates): function name -> action op.
CALLS = {"all_gather": "AG", "all_gather_linear": "AG", "reduce_scatter": "RS", "linear_reduce_scatter": "RS",
         "all_reduce": "AR", "project_all_gather": "KVAG", "scatter_hidden": "SCATTER", "gather_hidden": "GATHER",
         "send": "SEND", "receive": "RECV"}
CALLS.update({f"{name}_direct": op for name, op in CALLS.items() if op in ("AG", "RS")})
# The plain collectives (their GEMM runs after or before them whole): tiles 0.
PLAIN = {"all_gather", "reduce_scatter", "all_gather_direct", "reduce_scatter_direct"}
WIRE = {"float16": "f16", "bfloat16": "bf16"}
TINY_SEQ = 32


# --- what the modules call ---------------------------------------------------------------------
def called(source: str, entry: str = "forward") -> list[str]:
    """The actions a module runs from `entry`, in order, with their tiles and wire dtype."""
    functions = {n.name: n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    found: list[str] = []

    def visit_statements(body: list[ast.stmt]) -> None:
        for statement in body:
            if isinstance(statement, ast.For):
                runs = _layer_loop_runs(statement)
                for _ in range(runs):
                    visit_statements(statement.body)
            else:
                visit_expression(statement)

    def visit_expression(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):  # arguments run before the call that takes them
            if not isinstance(child, ast.FunctionDef):
                visit_expression(child)
        if isinstance(node, ast.Call):
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if isinstance(node.func, ast.Name) and name in functions:
                visit_statements(functions[name].body)
            elif name in CALLS and (isinstance(node.func, ast.Name) or _is_handoff(node.func)):
                found.append(_action(name, node))

    visit_statements(functions[entry].body)
    return found


def _is_handoff(func: ast.expr) -> bool:
    return isinstance(func, ast.Attribute) and ast.unparse(func.value) == "ctx.handoff"


def _layer_loop_runs(loop: ast.For) -> int:
    """`for w in layers[a:b]` runs b - a times; any other loop in forward is a test failure."""
    target = loop.iter
    assert isinstance(target, ast.Subscript) and isinstance(target.slice, ast.Slice), ast.unparse(loop)
    return ast.literal_eval(target.slice.upper) - ast.literal_eval(target.slice.lower)


def _action(name: str, call: ast.Call) -> str:
    op = CALLS[name]
    keywords = {k.arg: k.value for k in call.keywords}
    options = []
    if name in PLAIN:
        options.append("t0")
    elif "tiles" in keywords and ast.literal_eval(keywords["tiles"]) > 1:
        options.append(f"t{ast.literal_eval(keywords['tiles'])}")
    if "wire_dtype" in keywords:
        options.append(WIRE[ast.unparse(keywords["wire_dtype"]).removeprefix("torch.")])
    if name.endswith("_direct"):
        options.append("direct")
    return f"{op}({','.join(options)})" if options else op


# --- what the cost model charges ---------------------------------------------------------------
def charged(plan: Plan, rank: int) -> list[str]:
    """The actions predict() charged for `rank`: its stage's enter block, its per-layer blocks once
    per layer, its exit block, and on rank 0 the head's block."""
    index = plan.stage_of_rank(rank)
    blocks = [b for b in plan.predicted_blocks if b.stage == index and b.block != "epilogue"]
    per_layer = [a for b in blocks if b.per_layer for a in b.actions]
    first = next(i for i, b in enumerate(blocks) if b.per_layer)
    once_before = [a for b in blocks[:first] for a in b.actions]
    once_after = [a for b in blocks[first:] if not b.per_layer for a in b.actions]
    head = [a for b in plan.predicted_blocks if b.block == "epilogue" for a in b.actions] if rank == 0 else []
    return once_before + per_layer * len(plan.stages[index].layers) + once_after + head


# --- tiny models of each family and golden plans moved onto them -------------------------------
def _config(family: str, layers: int):
    from transformers import BertConfig, GPT2Config, LlamaConfig
    if family == "bert":
        return BertConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=16, intermediate_size=128,
                          vocab_size=64, max_position_embeddings=64, attn_implementation="sdpa")
    if family == "gpt2":
        return GPT2Config(n_embd=64, n_layer=layers, n_head=16, n_inner=128, vocab_size=64, n_positions=64,
                          attn_implementation="sdpa")
    return LlamaConfig(hidden_size=64, num_hidden_layers=layers, num_attention_heads=16, num_key_value_heads=8,
                       intermediate_size=128, vocab_size=64, max_position_embeddings=64, attn_implementation="sdpa")


@functools.cache
def tiny(family: str, layers: int, folder: Path):
    """(captured, graph, summary) of a tiny `family` model with `layers` layers."""
    path = folder / f"{family}-{layers}"
    _config(family, layers).save_pretrained(path)
    return capture_model(str(path / "config.json"), None, TINY_SEQ)


def retarget(plan: Plan, summary: ModelSummary) -> Plan:
    """`plan`'s stages, layers and schedules with per-rank shares rescaled to `summary`."""
    group = summary.heads // summary.kv_heads

    def rescale(values: tuple[int, ...], total: int, whole: bool) -> tuple[int, ...]:
        return (total,) * len(values) if whole else tuple(split_sizes(total, values))

    stages = []
    for stage in plan.stages:
        schedule = stage.schedule
        kv = rescale(stage.kv_heads_per_rank, summary.kv_heads, not schedule.shards_weights)
        stages.append(replace(
            stage, kv_heads_per_rank=kv, heads_per_rank=tuple(k * group for k in kv),
            columns_per_rank=rescale(stage.columns_per_rank, summary.intermediate, not schedule.shards_weights),
            tokens_per_rank=rescale(stage.tokens_per_rank, summary.seq_len, schedule.layout == "whole")))
    moved = replace(plan, model=summary.name, stages=tuple(stages))
    validate_plan(moved, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len, summary.n_layers)
    return moved


def check_one_walk(plan: Plan, cluster: Cluster, family: str, folder: Path) -> None:
    captured, graph, summary = tiny(family, plan.stages[-1].end_layer, folder)
    moved = retarget(plan, summary)
    _, blocks = predict(moved, build_cost_table(summary, cluster, plan.wire_dtype))
    moved = replace(moved, predicted_blocks=blocks)
    for rank in range(plan.world_size):
        assert charged(moved, rank) == charged(plan, rank), f"rank {rank}: retargeting changed the schedule"
    for lowered in lower(graph, captured, moved, "tiny"):
        rank = lowered.program.rank
        source = render_rank(lowered.program)
        assert called(source) == charged(moved, rank), f"rank {rank} of {plan.solver} on {cluster.name}"


# --- the cases ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-families")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_golden_plans_call_what_they_are_charged(case, folder):
    doc = read(case)
    check_one_walk(doc.plan, doc.cluster, case.model, folder)


BENCHMARK_CLUSTERS = ("two-uneven", "four-uneven")


@pytest.mark.parametrize("cluster_name", BENCHMARK_CLUSTERS)
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_benchmark_variants_call_what_they_are_charged(family, cluster_name, folder):
    from benchmarks.variants import VARIANTS, with_bandwidth
    from galaxy.compiler.ir.cluster_file import load_cluster
    summary = read(next(c for c in CASES if c.model == family and c.size == "base")).summary
    cluster = with_bandwidth(load_cluster(ROOT / "clusters" / f"{cluster_name}.toml"), 1e9)
    for name, variant in VARIANTS.items():
        check_one_walk(variant.make(summary, cluster), cluster, family, folder)


def test_the_reader_follows_loops_and_calls():
    source = (
        "def forward(inputs, weights, ctx):\n"
        "    x, r = scatter_hidden(None, T, ring, [[1]], src=0)\n"
        "    for w in layers[0:3]:\n"
        "        x = layer(w, x)\n"
        "    ctx.handoff.send([x], T, ring, [0], 'h', wire_dtype=torch.float16)\n"
        "def layer(w, x):\n"
        "    y = reduce_scatter(F.linear(all_gather_linear(x, w, None, T, ring, tiles=2), w), T, ring)\n"
        "    return linear_reduce_scatter_direct(all_gather_direct(y, T, ring), w, T, ring)\n")
    assert called(source) == ["SCATTER", *["AG(t2)", "RS(t0)", "AG(t0,direct)", "RS(direct)"] * 3, "SEND(f16)"]
