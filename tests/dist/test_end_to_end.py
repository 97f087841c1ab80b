"""Compiled bundles run as real gloo processes and match the single-process model.

Table: model x device count x split shape, each ending in assert_close(ATOL, RTOL).
"""
from __future__ import annotations

import pytest
import torch

from galaxy.host.launcher import run_local
from helpers import ATOL, RTOL, build_bundle, captured_tiny, manual_plan

pytestmark = pytest.mark.dist

# (heads, columns, tokens) weights per rank; uneven everywhere, tokens free of the rest.
SPLITS = {
    1: ([1], [1], [1]),
    2: ([2, 1], [3, 1], [1, 1]),
    3: ([1, 1, 1], [3, 2, 1], [5, 2, 1]),
    4: ([2, 1, 1, 0], [4, 2, 1, 1], [3, 3, 1, 1]),
}
CASES = [(kind, n) for kind in ("bert", "gpt2", "llama") for n in (1, 2, 3, 4)]


@pytest.fixture(scope="module")
def tiny_models():
    return {kind: captured_tiny(kind) for kind in ("bert", "gpt2", "llama")}


def _run(tmp_path, model, plan):
    captured, graph, summary = model
    bundle = build_bundle(tmp_path / "bundle", captured, graph, summary, plan)
    result = run_local(bundle, timeout_s=60)
    assert set(result.outputs) == set(captured.reference_outputs)
    for name, expected in captured.reference_outputs.items():
        torch.testing.assert_close(result.outputs[name], expected, atol=ATOL, rtol=RTOL)
    return result


@pytest.mark.parametrize("kind,n", CASES, ids=[f"{k}-{n}dev" for k, n in CASES])
def test_matches_single_process(tmp_path, tiny_models, kind, n):
    summary = tiny_models[kind][2]
    heads, columns, tokens = SPLITS[n]
    if kind == "llama" and n == 4:  # 3 KV groups: one rank holds none
        heads = [1, 1, 1, 0]
    _run(tmp_path, tiny_models[kind], manual_plan(summary, heads, columns, tokens))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_tiled_overlap_matches(tmp_path, tiny_models, kind):
    summary = tiny_models[kind][2]
    _run(tmp_path, tiny_models[kind], manual_plan(summary, [1, 1, 1], [2, 1, 1], [2, 1, 1], tiles=3))


@pytest.mark.parametrize("kind,tiles,algorithm", [("bert", 0, "ring"), ("llama", 0, "direct"), ("gpt2", 1, "direct")])
def test_plain_and_direct_collectives_match(tmp_path, tiny_models, kind, tiles, algorithm):
    """Tiles 0 runs the plain collectives; direct ones send every chunk to every peer at once,
    plain (tiles 0) or with each peer's rows computed as they arrive (tiles 1)."""
    summary = tiny_models[kind][2]
    plan = manual_plan(summary, [1, 1, 1], [3, 2, 1], [5, 2, 1], tiles=tiles, algorithm=algorithm)
    assert str(plan.stages[0].schedule).count(algorithm if algorithm == "direct" else f"t{tiles}") == 4
    _run(tmp_path, tiny_models[kind], plan)


def test_rank_with_no_tokens_or_no_heads(tmp_path, tiny_models):
    """A rank may hold heads but no tokens, or tokens but no heads and no columns."""
    summary = tiny_models["bert"][2]
    _run(tmp_path, tiny_models["bert"], manual_plan(summary, [1, 1, 0], [1, 1, 0], [1, 0, 1]))


WIRE_PLANS = {  # (wire dtype, plan shape, tiles)
    "f16-hybrid": ("float16", "hybrid", 1), "f16-hybrid-tiles": ("float16", "hybrid", 2),
    "bf16-hybrid": ("bfloat16", "hybrid", 1), "f16-megatron": ("float16", "tensor", 1),
    "f16-sequence": ("float16", "sequence", 2),
}


@pytest.mark.parametrize("case", list(WIRE_PLANS))
def test_reduced_wire_dtype_errs_as_measured_at_compile_time(tmp_path, tiny_models, case):
    """Activations travel as float16 or bfloat16 (half the bytes): every output stays within the stated
    tolerance of its dtype, and near the error the compiler measured by rounding the same borders on
    one process (the bundle's plan.json carries it; a reduce-scatter's hops round a little differently)."""
    from galaxy.host.launcher import TOLERANCE_BY_WIRE_DTYPE
    wire, shape, tiles = WIRE_PLANS[case]
    captured, graph, summary = tiny_models["llama"]
    heads = None if shape == "sequence" else [1, 1, 1]
    plan = manual_plan(summary, heads, heads and [2, 1, 1], [2, 1, 1], tiles=tiles, wire_dtype=wire, shape=shape)
    result = run_local(build_bundle(tmp_path / "bundle", captured, graph, summary, plan), timeout_s=60)
    atol, rtol = TOLERANCE_BY_WIRE_DTYPE[wire]
    assert result.within_tolerance and result.expected_error
    for name, expected in captured.reference_outputs.items():
        torch.testing.assert_close(result.outputs[name], expected, atol=atol, rtol=rtol)
        assert result.outputs[name].dtype == expected.dtype
        assert result.expected_error[name] / 3 < result.max_abs_error[name] < 3 * result.expected_error[name]


def _custom_model(method: str = "export"):
    from galaxy.compiler.capture.load import load_model
    from galaxy.compiler.capture.trace import capture
    from galaxy.compiler.passes.recognise import recognise
    from galaxy.compiler.passes.summarise import summarise
    from helpers import MODELS
    captured = capture(load_model(str(MODELS / "custom.py"), size="tiny"), method=method)
    graph = recognise(captured)
    return captured, graph, summarise(graph, captured)


@pytest.mark.parametrize("method", ["export", "symbolic"])
def test_plain_pytorch_model_without_a_template(tmp_path, method):
    """models/custom.py is no HF model: it compiles from its graph patterns alone."""
    model = _custom_model(method)
    _run(tmp_path, model, manual_plan(model[2], [2, 1, 1], [1, 2, 1], [1, 1, 2]))


@pytest.mark.parametrize("kind,tokens,tiles", [("bert", [3, 2, 1], 1), ("gpt2", [1, 1], 1),
                                               ("llama", [5, 2, 1, 1], 1), ("custom", [1, 2, 1], 1),
                                               ("bert", [3, 2, 1], 2), ("gpt2", [4, 3], 3),
                                               ("llama", [5, 2, 1, 1], 3)])
def test_sequence_parallel_only_baseline(tmp_path, tiny_models, kind, tokens, tiles):
    """Every rank holds every weight and runs its own tokens; masks, rotary tables and the
    causal mask (custom.py uses is_causal=True) are cut to each rank's query rows. With tiles,
    keys and values (rotated, for Llama) are projected and sent tile by tile; tiles beyond a
    rank's tokens stay empty."""
    model = _custom_model() if kind == "custom" else tiny_models[kind]
    _run(tmp_path, model, manual_plan(model[2], None, None, tokens, tiles=tiles))


PIPELINES = {
    "two-stages-of-one": [(1, [1]), (1, [1])],
    "hmp-stage-then-one": [(1, [2, 1]), (1, [1])],
    "one-then-hmp-stage": [(1, [1]), (1, [1, 1])],
}


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("shape", list(PIPELINES))
def test_pipeline_stages(tmp_path, tiny_models, kind, shape):
    """EdgePipe-style plans: stages of layers, each with hybrid parallelism over its own ranks."""
    from helpers import pipeline_plan
    summary = tiny_models[kind][2]
    _run(tmp_path, tiny_models[kind], pipeline_plan(summary, PIPELINES[shape]))


@pytest.mark.parametrize("kind", ["bert", "gpt2", "llama"])
def test_megatron_style_baseline(tmp_path, tiny_models, kind):
    """The baseline: replicated connective blocks, all-reduce after tensor-parallel blocks."""
    summary = tiny_models[kind][2]
    plan = manual_plan(summary, [1, 1, 1], [1, 1, 1], [1, 1, 1], shape="tensor")
    _run(tmp_path, tiny_models[kind], plan)
