"""Generated modules read like the plan: assertions on the emitted text."""
from __future__ import annotations

import ast
import re

import pytest

from galaxy.compiler.codegen.render import render_rank
from galaxy.compiler.lower.shard import lower
from helpers import captured_tiny, manual_plan, pipeline_plan


@pytest.fixture(scope="module")
def llama():
    return captured_tiny("llama")


def _sources(model, plan):
    captured, graph, _ = model
    return {r.program.rank: render_rank(r.program) for r in lower(graph, captured, plan, "models/llama.py")}


def _function(source: str, name: str) -> str:
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    return ast.get_source_segment(source, node)


def test_each_rank_states_its_share_and_runs_two_gathers_and_two_scatters_per_layer(llama):
    summary = llama[2]
    sources = _sources(llama, manual_plan(summary, [2, 1, 0], [2, 1, 1], [1, 1, 2]))
    assert set(sources) == {0, 1, 2}
    first = sources[0]
    assert 'this device, "dev0" (rank 0 of 3), runs 4 of 6 attention heads (0-3)' in first
    assert "tokens 0-7 of 32" in first
    assert "Schedule: SCATTER | attn:AG>RS mlp:AG>RS | GATHER" in first
    assert "It holds the input, runs the head" in first and "It holds the input" not in sources[1]
    assert "def epilogue(" in first and "def epilogue(" not in sources[1]
    layer = _function(first, "layer")
    assert len(re.findall(r"\battention\(", layer)) == 1 and len(re.findall(r"\bmlp\(", layer)) == 1
    for block in ("attention", "mlp"):  # tiles 1: each rank's chunk computed on while the others move
        assert _function(first, block).count("all_gather_linear(") == 1
        assert _function(first, block).count("linear_reduce_scatter(") == 1
    assert "TOKENS_PER_RANK = [8, 8, 16]" in first and "No heads of 6" in sources[2]
    assert "HEADS_PER_RANK" not in first  # no constant nothing reads
    # RoPE is copied from the graph as one per-head transform that q and k share.
    assert "def rotary(t, static):" in first and "-t[..., 8:]" in _function(first, "rotary")
    assert "q = rotary(q, static)" in first and "k = rotary(k, static)" in first and "_transform" not in first
    # One layer function, called in a loop: identical layers share code.
    assert len(re.findall(r"^def layer\(", first, re.M)) == 1
    assert "for w in layers[0:1]:" in first


def test_overlap_plans_call_the_fused_ring_ops(llama):
    summary = llama[2]
    source = _sources(llama, manual_plan(summary, [1, 1], [1, 1], [1, 1], tiles=4))[1]
    assert "TILES" not in source
    assert "all_gather_linear(x, " in _function(source, "attention") and ", tiles=4)" in _function(source, "attention")
    assert "linear_reduce_scatter(" in _function(source, "mlp")
    assert "reduce_scatter(F.linear" not in source


def test_megatron_plans_all_reduce_and_keep_every_token(llama):
    summary = llama[2]
    source = _sources(llama, manual_plan(summary, [1, 1], [1, 1], [1, 1], shape="tensor"))[0]
    assert "all_reduce(F.linear(" in _function(source, "attention")
    assert "all_reduce(F.linear(" in _function(source, "mlp")
    assert "MY_TOKENS" not in source and "all_gather" not in source and "TOKENS_PER_RANK" not in source
    assert "Schedule: REP | attn:AR mlp:AR | -" in source


def test_pipeline_stages_hand_over_between_leaders(llama):
    summary = llama[2]
    sources = _sources(llama, pipeline_plan(summary, [(1, [1, 1]), (1, [1])]))
    assert "STAGE = 0" in sources[0] and "STAGE = 1" in sources[2]
    assert "ctx.handoff.send([x, residual]" in sources[1]
    assert "ctx.handoff.receive(" in _function(sources[2], "forward")
    assert "def epilogue(" in sources[0] and "def epilogue(" not in sources[2]
    assert "in its layer 1." in sources[2].split('"""')[1]  # one layer: not "each of its layers 1"


def test_sequence_parallel_only_plans_gather_keys_and_values_once_per_layer(llama):
    summary = llama[2]
    source = _sources(llama, manual_plan(summary, None, None, [2, 1]))[1]
    attention, mlp = _function(source, "attention"), _function(source, "mlp")
    assert attention.count("all_gather(") == 1 and "torch.cat([k, v]" in attention
    assert "reduce_scatter" not in source and "all_gather" not in mlp
    # RoPE tables and the mask keep this rank's query rows; the whole-sequence values stay for the head.
    assert "QUERY_ROW_STATICS = {'mask': -2" in source and "layer(w, x, residual, rows, ring)" in source
    assert "sequence parallelism only" in source.split('"""')[1]


def test_pipeline_rank_0_streams_with_the_head_apart(llama):
    """Rank 0 of a pipeline: start (stage 0) and finish (the head) apart, and a stream of both."""
    summary = llama[2]
    sources = _sources(llama, pipeline_plan(summary, [(1, [1, 1]), (1, [1])]))
    assert "ctx.handoff.send(" in _function(sources[0], "start")
    assert "ctx.handoff.receive(" in _function(sources[0], "finish")
    assert "pipelined(requests, start, finish, weights, ctx, lag=1)" in _function(sources[0], "stream")
    assert "run_rank(RANK, forward, stream=stream)" in sources[0]
    assert "def stream(" not in sources[1] and "def stream(" not in sources[2]
    single = _sources(llama, manual_plan(summary, [1, 1], [1, 1], [1, 1]))[0]
    assert "def stream(" not in single and "handoff" not in single


def test_summaries_count_the_hidden_stream_tensors_a_hand_off_and_the_head_move(llama):
    summary = llama[2]
    assert (summary.layer_entry_tensors, summary.head_input_tensors) == (2, 2)  # normed stream and residual
