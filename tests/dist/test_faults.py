"""Lost and straggling devices, end to end: real rank processes, real faults, real re-plans.

Every fault kind runs on local processes (SIGKILL; a link cut off is a process stopped for good;
a slowdown is a SIGSTOP/SIGCONT duty cycle) and on the emulator when this is root (the cgroup, the
switch port). Each trial goes through `galaxy-run --requests N --inject ...` and checks that every
answer matches the bundle's reference, that the recovery reports its phases and bytes, and that
the last outputs are written by name; the serving tests check that requests arriving during a
switch wait and are answered (against the eager model), and that devices left that cannot hold
the model answer 503 with the planner's shortfall.
"""
from __future__ import annotations

import concurrent.futures
import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import torch

from _emulation import needs_emulation
from galaxy.compiler.cost.memory import plan_memory_bytes
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.cluster import Cluster, Device, Link
from galaxy.compiler.pipeline import capture_model, write_plan_bundle
from galaxy.compiler.planner import make_plan
from galaxy.runtime import bundle as rt_bundle
from galaxy.serve import Client, ServeError
from helpers import MODELS, manual_plan
from serve_helpers import ServeProcess, TinyModel, metric_samples

pytestmark = [pytest.mark.dist, pytest.mark.timeout(400)]
GIB = 2 ** 30
FAST = ("--heartbeat", "0.5", "--dead-after", "2", "--timeout", "30")
# A small BERT (4 layers, hidden 256, 128 tokens): enough compute per request for a slowdown to show.
SMALL_BERT = {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
              "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 128}


def _cluster(memory_bytes: int = GIB) -> Cluster:
    return Cluster("three-equal", tuple(Device(n, memory_bytes, 40e9, cpu_share=0.6) for n in ("a", "b", "c")),
                   Link(125e6, 5e-4))


def _bundle(folder: Path, source: str, size: str | None, plan_of, cluster: Cluster, seq_len: int | None = None) -> Path:
    captured, graph, summary = capture_model(source, size, seq_len)
    return write_plan_bundle(folder, plan_of(summary, cluster), summary, graph, captured, source, cluster, None,
                             {"size": size, "seq_len": seq_len, "capture": "export"})


def _hmp3(summary, cluster):
    return replace(manual_plan(summary, [1, 1, 1], [1, 1, 1], [1, 1, 1]), devices=cluster.names, cluster=cluster.name)


def _tight(summary) -> Cluster:
    """Three devices with just the memory the three-way split needs: two of them cannot hold the model."""
    need = max(plan_memory_bytes(_hmp3(summary, _cluster()), build_cost_table(summary, _cluster())).values())
    cluster = _cluster(int(need * 1.05))
    with pytest.raises(InfeasiblePlanError):
        make_plan(summary, Cluster(cluster.name, cluster.devices[:2], cluster.default_link))
    return cluster


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    bert = str(MODELS / "bert.py")
    (root / "small").mkdir()
    (root / "small" / "config.json").write_text(json.dumps(SMALL_BERT))
    summary = capture_model(bert, "tiny")[2]
    return {"tiny": _bundle(root / "tiny", bert, "tiny", _hmp3, _cluster()),
            "tight": _bundle(root / "tight", bert, "tiny", _hmp3, _tight(summary)),
            "small": _bundle(root / "small-bundle", str(root / "small" / "config.json"), None,
                             lambda s, c: make_plan(s, c, solver="proportional"), _cluster(), seq_len=128)}


def _trial(bundle: Path, mode: str, requests: int, *faults: str, output: Path | None = None,
           extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "galaxy.host.launcher", str(bundle), mode, "--requests", str(requests),
               *FAST, *extra, *[a for fault in faults for a in ("--inject", fault)]]
    if output is not None:
        command += ["--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=360)
    assert "every output matched the reference" in done.stdout, done.stdout + done.stderr[-4000:]
    return done


def _rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if re.match(r"\s+\d+\s+[\d.]+ ms", line)]


def _check_trial(done: subprocess.CompletedProcess, requests: int, recoveries: int | range) -> None:
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    rows = _rows(done.stdout)
    assert len(rows) == requests and all("matches the reference" in row for row in rows), done.stdout
    recoveries = range(recoveries, recoveries + 1) if isinstance(recoveries, int) else recoveries
    decisions = "\n".join(line for line in done.stderr.splitlines() if "galaxy-serve:" in line)
    assert done.stdout.count("\n  phases: detect") in recoveries, done.stdout + decisions
    assert "every output matched the reference (atol=0.0001, rtol=0.0001, " in done.stdout
    assert done.stdout.rstrip().endswith(": yes")


def _check_output(output: Path, bundle: Path) -> None:
    written, reference = rt_bundle.load_tensors(output), rt_bundle.load_tensors(bundle / rt_bundle.REFERENCE_OUTPUTS)
    assert set(written) == set(reference)  # the last request's outputs by name, as without faults
    for name, value in reference.items():
        torch.testing.assert_close(written[name], value, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("mode, prepare", [("--local", "ahead"),
                                           pytest.param("--emulate", "on-fault", marks=needs_emulation)])
def test_a_rank_killed_mid_stream(bundles, tmp_path, mode, prepare):
    done = _trial(bundles["tiny"], mode, 6, "kill:1@3", output=tmp_path / "out.safetensors",
                  extra=("--prepare", prepare))
    _check_trial(done, 6, recoveries=1)
    assert "recovery 1: lost b" in done.stdout
    assert ("(prepared ahead)" if prepare == "ahead" else "(prepared on the fault)") in done.stdout
    # the broken group's failures are the loss's symptoms, not a reason to form the new group again
    assert "forming the group again" not in done.stderr
    plans = [row.split()[3] for row in _rows(done.stdout)]
    # Request 3 is retried on the new plan, unless it was answered before the kill (which comes
    # just after its run words) landed: then request 4 is the first on it.
    assert plans[0] == plans[1] != plans[5] and plans.index(plans[5]) in (2, 3)
    assert re.search(r"weights: [\d.]+ MiB moved .* a full reload is [\d.]+ MiB", done.stdout)
    _check_output(tmp_path / "out.safetensors", bundles["tiny"])


@pytest.mark.parametrize("mode", ["--local", pytest.param("--emulate", marks=needs_emulation)])
def test_a_cut_link_is_detected_by_heartbeats_and_handled_as_a_lost_device(bundles, mode):
    done = _trial(bundles["tiny"], mode, 5, "linkdown:2@2")
    _check_trial(done, 5, recoveries=1)
    assert "recovery 1: lost c (no heartbeat" in done.stdout
    detect_ms = float(re.search(r"phases: detect (\d+) ms", done.stdout).group(1))
    assert detect_ms <= 1000 * (2 + 0.5) + 500  # --dead-after, one heartbeat period, and some slack


def test_a_second_fault_during_the_recovery_is_handled_the_same_way(bundles):
    done = _trial(bundles["tiny"], "--local", 5, "linkdown:2@2", "kill:0@recovery")
    _check_trial(done, 5, recoveries=1)
    assert "note: also lost a during the recovery" in done.stdout
    assert _rows(done.stdout)[-1].split()[4] == "b"  # only b is left


@pytest.mark.parametrize("mode", ["--local", pytest.param("--emulate", marks=needs_emulation)])
def test_a_straggler_is_replanned_around(bundles, mode):
    # Minimum gain 0: this checks the mechanism; the next test, the policy. On so small a model
    # a re-plan for a slowdown near x2 is predicted only 5-15% faster, so the default 10% would keep
    # the plan or not by chance.
    done = _trial(bundles["small"], mode, 18, "slow:2:4@4", extra=("--straggler-requests", "2", "--min-gain", "0"))
    _check_trial(done, 18, recoveries=range(1, 5))  # a first estimate may be refined by later switches
    # under CPU quotas a peer busy for a moment may be re-planned around first, then c
    assert re.search(r"recovery \d: straggler (\w+ x[\d.]+, )*c x[\d.]+(, \w+ x[\d.]+)* -> plan", done.stdout), done.stdout
    assert "lost" not in done.stdout
    first, last = _rows(done.stdout)[0].split()[3], _rows(done.stdout)[-1].split()[3]
    assert first != last


def test_a_straggler_is_not_replanned_around_for_too_little_gain(bundles):
    done = _trial(bundles["small"], "--local", 10, "slow:2:4@3", extra=("--straggler-requests", "2", "--min-gain", "0.9"))
    _check_trial(done, 10, recoveries=0)
    assert re.search(r"galaxy-serve: keeping plan \w+ .*: at the measured rates it is predicted [\d.]+ ms, the "
                     r"re-plan [\d.]+ ms \(less than 90% better\)", done.stderr), done.stderr[-4000:]
    assert len({row.split()[3] for row in _rows(done.stdout)}) == 1


def test_devices_left_that_cannot_hold_the_model_answer_with_the_shortfall(bundles):
    tiny = TinyModel.bert()
    with ServeProcess(bundles["tight"], extra=(*FAST[:4], "--inject", "kill:1@2")) as server:
        requests = tiny.requests(3)
        with Client(server.url) as client:
            tiny.check(requests[0], client.infer(requests[0]))
            answered = 0
            with pytest.raises(ServeError) as info:
                # The kill comes just after request 2's run words, so that request may still be
                # answered (correctly) before b dies; the one after cannot be.
                for inputs in requests[1:]:
                    tiny.check(inputs, client.infer(inputs))
                    answered += 1
        assert answered <= 1
        assert info.value.status == 503
        message = str(info.value)
        assert "cannot recover from lost b" in message and "cannot hold the model" in message
        assert re.search(r"lacks [\d.]+ [KMG]iB", message), message
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
        assert health["status"] == "unavailable" and "cannot hold the model" in health["reason"]


def test_requests_arriving_during_the_switch_wait_and_are_answered(bundles):
    tiny = TinyModel.bert()
    with ServeProcess(bundles["tiny"], extra=(*FAST[:4], "--inject", "kill:2@5")) as server:
        _await_recovery_ready(server.url)
        requests = tiny.requests(24)

        def one(inputs):
            with Client(server.url) as client:
                return client.infer(inputs)
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(one, requests))
        for inputs, outputs in zip(requests, answers):
            tiny.check(inputs, outputs)
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
        assert health["status"] == "ok" and health["lost"] == ["c"]
        (record,) = health["recoveries"]
        assert record["kind"] == "lost" and set(record["phases_s"]) == {"detect", "re-plan", "transfer",
                                                                         "first answer", "total"}
        assert all(v is not None for v in record["phases_s"].values())
        assert record["bytes"]["peer"] + record["bytes"]["host"] < record["bytes"]["full_reload"]
        samples = metric_samples(httpx.get(f"{server.url}/metrics", timeout=10).text)
        assert samples[("galaxy_recoveries_total", (("kind", "lost"),))] == 1
        assert samples[("galaxy_requests_total", ())] == 24


def _await_recovery_ready(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not httpx.get(f"{url}/healthz", timeout=10).json()["recovery"]["ready"]:
        assert time.monotonic() < deadline, "recovery was not ready in time"
        time.sleep(0.2)
