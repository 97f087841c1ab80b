"""Many requests stream through a pipeline, its stages overlapped, as real gloo processes.

Every request has inputs of its own (other tokens; for BERT also a padding mask, so each rank's
prologue differs per request) and each output must match the eager model on those inputs.
"""
from __future__ import annotations

import json
import time

import pytest
import torch

from galaxy.compiler.capture.load import load_model
from galaxy.compiler.capture.trace import capture, flatten_outputs
from galaxy.compiler.passes.recognise import recognise
from galaxy.compiler.cost.memory import rank_memory_bytes
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.ir.cluster import Cluster, Device, Link
from galaxy.compiler.passes.summarise import summarise
from galaxy.compiler.planner import make_plan
from galaxy.runtime import bundle as rt_bundle
from galaxy.host.launcher import LaunchError, run_local
from helpers import ATOL, RTOL, build_bundle, manual_plan, pipeline_plan, request_inputs

pytestmark = pytest.mark.dist

REQUESTS = 5
# HF configs with the tiny models' shapes but four layers, so three stages have work.
CONFIGS = {
    "bert": {"model_type": "bert", "hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 6,
             "intermediate_size": 384, "vocab_size": 512, "max_position_embeddings": 32},
    "llama": {"model_type": "llama", "hidden_size": 96, "num_hidden_layers": 4, "num_attention_heads": 6,
              "num_key_value_heads": 3, "intermediate_size": 256, "vocab_size": 512,
              "max_position_embeddings": 32},
}
PIPELINES = {
    "two-stages": [(2, [1]), (2, [1])],
    "three-stages-hmp": [(1, [2, 1]), (2, [1]), (1, [1, 1])],
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """kind -> (eager module, captured, graph, summary), all from one load."""
    built = {}
    for kind, config in CONFIGS.items():
        folder = tmp_path_factory.mktemp(kind)
        (folder / "config.json").write_text(json.dumps(config))
        loaded = load_model(str(folder / "config.json"))
        captured = capture(loaded)
        graph = recognise(captured)
        built[kind] = (loaded.module, captured, graph, summarise(graph, captured))
    return built


def _stream_and_check(tmp_path, model, plan, requests: int = REQUESTS):
    module, captured, graph, summary = model
    bundle = build_bundle(tmp_path / "bundle", captured, graph, summary, plan)
    inputs = request_inputs(captured.example_inputs, requests, module.config.vocab_size)
    files = []
    for i, request in enumerate(inputs):
        files.append(tmp_path / f"request_{i}.safetensors")
        rt_bundle.save_tensors(files[-1], request)
    result = run_local(bundle, input_path=files, timeout_s=60)
    assert len(result.request_outputs) == requests and len(result.latencies_s) == requests
    assert result.requests_per_s[0] > 0
    for request, outputs in zip(inputs, result.request_outputs):
        with torch.no_grad():
            expected = flatten_outputs(module(**request), captured.output_names)
        assert set(outputs) == set(expected)
        for name, value in expected.items():
            torch.testing.assert_close(outputs[name], value, atol=ATOL, rtol=RTOL)
    return result


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("shape", list(PIPELINES))
def test_pipeline_streams_different_requests(tmp_path, models, kind, shape):
    _stream_and_check(tmp_path, models[kind], pipeline_plan(models[kind][3], PIPELINES[shape]))


def group_stage_cluster(summary) -> Cluster:
    """Two fast devices on a fast link that together hold three of the four layers (a, b), and a
    slow roomy device on slow links (c); memory in units of what one device needs for the whole model."""
    probe = Cluster("probe", (Device("x", 2**30, 1e9),), Link(1e9, 1e-4))
    table = build_cost_table(summary, probe)
    whole = rank_memory_bytes(table, table.n_layers, table.kv_groups, table.columns, table.tokens, True, True)
    devices = (Device("a", int(0.6 * whole), 20e9), Device("b", int(0.4 * whole), 20e9),
               Device("c", 2 * whole, 5e9))
    return Cluster("fast-pair-slow-third", devices, Link(100e6 / 8, 2e-4),
                   link_overrides=(("a", "b", Link(10_000e6 / 8, 5e-5)),))


@pytest.mark.parametrize("objective", ["latency", "throughput"])
def test_planner_chosen_group_stage_pipeline(tmp_path, models, objective):
    """The planner's own choice, a pipeline whose first stage is HMP over a and b, runs and streams."""
    summary = models["bert"][3]
    plan = make_plan(summary, group_stage_cluster(summary), objective=objective)
    assert [[plan.devices[r] for r in s.ranks] for s in plan.stages] == [["a", "b"], ["c"]]
    _stream_and_check(tmp_path, models["bert"], plan, requests=3)


def test_one_stage_plan_streams_one_request_after_another(tmp_path, models):
    summary = models["bert"][3]
    _stream_and_check(tmp_path, models["bert"], manual_plan(summary, [2, 1], [1, 1], [1, 2]), requests=4)


def test_example_input_repeated_is_checked_against_the_reference(tmp_path, models):
    _, captured, graph, summary = models["llama"]
    bundle = build_bundle(tmp_path / "bundle", captured, graph, summary,
                          pipeline_plan(summary, PIPELINES["two-stages"]))
    result = run_local(bundle, requests=4, repeat=2, timeout_s=60)
    assert result.within_tolerance and len(result.request_outputs) == 4 and len(result.requests_per_s) == 2


def test_a_stage_that_dies_mid_stream_is_named(tmp_path, models):
    """Rank 2 (the last stage) crashes on its third request: the launcher names it, nobody hangs."""
    _, captured, graph, summary = models["bert"]
    bundle = build_bundle(tmp_path / "bundle", captured, graph, summary,
                          pipeline_plan(summary, [(2, [1, 1]), (2, [1])]))
    module = bundle / rt_bundle.rank_module(2)
    source = module.read_text().replace(
        "def forward(inputs, weights, ctx):\n",
        "CALLS = []\n\n\ndef forward(inputs, weights, ctx):\n"
        "    CALLS.append(1)\n    if len(CALLS) == 3:\n        import os\n        os._exit(9)\n", 1)
    module.write_text(source)
    rt_bundle.write_manifest(bundle, rt_bundle.read_manifest(bundle))
    started = time.monotonic()
    with pytest.raises(LaunchError) as info:
        run_local(bundle, requests=6, timeout_s=20)
    assert info.value.rank == 2 and "exit code 9" in str(info.value)
    assert time.monotonic() - started < 20  # peers notice the closed connection; no timeout needed
