"""galaxy-serve end to end on local processes: real ranks, a real HTTP server, real clients.

One server (a one-stage HMP plan of tiny BERT on two ranks) answers good and bad requests,
reports health and metrics, refuses strangers, and swaps to a two-stage pipeline plan of the
same model and back; every answer is compared with the eager model on the same inputs. A
second server (the pipeline plan) loses a rank to SIGKILL; a third is stopped by SIGTERM and
must leave no process behind.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest
import torch

from galaxy.runtime import bundle as rt_bundle
from galaxy.serve import Client, ServeError
from helpers import manual_plan, pipeline_plan
from serve_helpers import TOKEN, ServeProcess, TinyModel, alive, json_body, metric_samples

pytestmark = [pytest.mark.dist, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def tiny():
    return TinyModel.bert()


@pytest.fixture(scope="module")
def bundles(tiny, tmp_path_factory):
    """Three plans of one model on devices dev0 and dev1: HMP, a two-stage pipeline, an even HMP."""
    root = tmp_path_factory.mktemp("serve")
    summary = tiny.summary
    return {"hmp": tiny.bundle(root / "hmp", manual_plan(summary, [2, 1], [1, 1], [1, 2])),
            "pipeline": tiny.bundle(root / "pipeline", pipeline_plan(summary, [(1, [1]), (1, [1])])),
            "even": tiny.bundle(root / "even", manual_plan(summary, [1, 1], [1, 1], [1, 1]))}


@pytest.fixture(scope="module")
def server(bundles):
    with ServeProcess(bundles["hmp"]) as running:
        yield running


def _infer_all(url: str, tiny: TinyModel, requests: list[dict], clients: int) -> list[dict]:
    def one(inputs):
        with Client(url) as client:
            return client.infer(inputs)
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, requests))


def test_answers_match_the_eager_model(server, tiny):
    requests = tiny.requests(6)
    with Client(server.url) as client:
        for inputs in requests[:3]:
            tiny.check(inputs, client.infer(inputs))
    for inputs, outputs in zip(requests, _infer_all(server.url, tiny, requests, clients=4)):
        tiny.check(inputs, outputs)


def test_json_in_json_out(server, tiny):
    inputs = tiny.requests(2)[1]
    response = httpx.post(f"{server.url}/v1/infer", content=json_body(inputs),
                          headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 200, response.text
    document = response.json()
    outputs = {name: torch.tensor(values, dtype=getattr(torch, document["dtypes"][name]))
               for name, values in document["outputs"].items()}
    tiny.check(inputs, outputs)
    assert "cluster;dur=" in response.headers["server-timing"]


@pytest.mark.parametrize("case", ["wrong name", "wrong shape", "wrong dtype", "json floats for ids",
                                  "not safetensors", "not json", "json without inputs", "ragged json",
                                  "unknown content type"])
def test_malformed_requests_get_a_4xx_naming_what_the_bundle_takes(server, tiny, case):
    from safetensors.torch import save

    good = tiny.requests(1)[0]
    renamed = {("input_idz" if name == "input_ids" else name): t for name, t in good.items()}
    octet, as_json = {"Content-Type": "application/octet-stream"}, {"Content-Type": "application/json"}
    body, headers, status, needle = {
        "wrong name": (save(renamed), octet, 422, "input_idz"),
        "wrong shape": (save({**good, "input_ids": good["input_ids"][:, :16].contiguous()}), octet, 422, "[1, 32]"),
        "wrong dtype": (save({**good, "input_ids": good["input_ids"].int()}), octet, 422, "torch.int64"),
        "json floats for ids": (json_body({**good, "input_ids": good["input_ids"] + 0.5}), as_json, 422, "integers"),
        "not safetensors": (b"\x00" * 64, octet, 400, "safetensors"),
        "not json": (b"{inputs:", as_json, 400, "JSON"),
        "json without inputs": (b'{"input_ids": [[1]]}', as_json, 400, '{"inputs"'),
        "ragged json": (b'{"inputs": {"input_ids": [[1, 2], [3]]}}', as_json, 400, "rectangular"),
        "unknown content type": (b"input_ids=1", {"Content-Type": "text/plain"}, 415, "application/octet-stream"),
    }[case]
    response = httpx.post(f"{server.url}/v1/infer", content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    error = response.json()
    assert needle in error["error"]
    assert error["expected"]["input_ids"] == {"shape": [1, 32], "dtype": "int64"}
    with pytest.raises(ServeError) as info:  # the client raises with the server's message
        Client(server.url).infer({"input_ids": torch.zeros(1, 3, dtype=torch.int64)})
    assert info.value.status == 422 and "attention_mask" in str(info.value)


def test_healthz_and_metrics(server, tiny):
    health = httpx.get(f"{server.url}/healthz", timeout=10)
    assert health.status_code == 200
    document = health.json()
    assert document["status"] == "ok" and [r["device"] for r in document["ranks"]] == ["dev0", "dev1"]
    assert all(r["alive"] and r["plan"] == document["plan"] for r in document["ranks"])
    with Client(server.url) as client:
        client.infer(tiny.requests(1)[0])
        samples = metric_samples(client.metrics())
    assert samples[("galaxy_requests_total", ())] >= 1
    assert samples[("galaxy_request_seconds_count", ())] >= 1
    for device in ("dev0", "dev1"):
        assert samples[("galaxy_block_seconds_total", (("block", "attention"), ("device", device)))] > 0
        assert samples[("galaxy_rank_request_seconds_count", (("device", device),))] >= 1
    assert samples[("galaxy_link_bytes_total", (("dst", "dev1"), ("src", "dev0")))] > 0
    plans = [labels for (name, labels), value in samples.items() if name == "galaxy_plan_info" and value == 1]
    assert len(plans) == 1 and dict(plans[0])["plan"] == document["plan"]


def _rogue_rank(bundle_dir, rank: int, control: str, token: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GALAXY_CLUSTER_TOKEN": token}
    return subprocess.run([sys.executable, str(bundle_dir / rt_bundle.rank_module(rank)), "--serve", control,
                           "--connect-timeout", "20"], env=env, capture_output=True, text=True, timeout=60)


def test_a_rank_with_a_wrong_token_is_refused_by_name(server, bundles):
    done = _rogue_rank(bundles["hmp"], 1, server.control, "not-the-cluster-token-at-all")
    assert done.returncode == 2
    assert "refused rank 1 (dev1" in done.stderr and "wrong token" in done.stderr
    server.wait_for_line(r"refused a rank: rank 1 \(dev1.*wrong token", 10)
    assert httpx.get(f"{server.url}/healthz", timeout=10).json()["status"] == "ok"  # the cluster serves on


def test_a_rank_of_another_plan_is_refused_by_name(server, bundles):
    done = _rogue_rank(bundles["even"], 0, server.control, TOKEN)
    assert done.returncode == 2
    assert "refused rank 0 (dev0" in done.stderr and "runs plan" in done.stderr and "another bundle" in done.stderr


def test_swap_plans_and_back(server, bundles, tiny):
    """HMP -> a two-stage pipeline with requests in flight -> HMP; every answer checked."""
    swap = f"{server.url}/v1/plan"
    denied = httpx.post(swap, json={"bundle": str(bundles["pipeline"])}, timeout=10,
                        headers={"Authorization": "Bearer wrong"})
    assert denied.status_code == 401
    requests = tiny.requests(8)
    for target in ("pipeline", "hmp"):
        response = httpx.post(swap, json={"bundle": str(bundles[target])}, timeout=120,
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code == 200, response.text
        health = httpx.get(f"{server.url}/healthz", timeout=10).json()
        assert health["status"] == "ok" and health["bundle"] == str(bundles[target])
        for inputs, outputs in zip(requests, _infer_all(server.url, tiny, requests, clients=8)):
            tiny.check(inputs, outputs)


def test_a_swap_to_a_damaged_bundle_is_refused_and_another_swap_recovers(server, bundles, tiny, tmp_path):
    damaged = shutil.copytree(bundles["pipeline"], tmp_path / "damaged")
    shard = damaged / rt_bundle.rank_weights(1)
    shard.write_bytes(shard.read_bytes()[:-8] + b"tampered")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    response = httpx.post(f"{server.url}/v1/plan", json={"bundle": str(damaged)}, timeout=120, headers=headers)
    assert response.status_code == 503
    assert "rank 1 (dev1)" in response.json()["error"] and "weights/rank_1.safetensors" in response.json()["error"]
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 503
    response = httpx.post(f"{server.url}/v1/plan", json={"bundle": str(bundles["hmp"])}, timeout=120, headers=headers)
    assert response.status_code == 200, response.text
    with Client(server.url) as client:
        inputs = tiny.requests(3)[2]
        tiny.check(inputs, client.infer(inputs))


def test_pipeline_serves_several_requests_in_flight_and_a_killed_rank_is_named(bundles, tiny):
    with ServeProcess(bundles["pipeline"]) as running:
        requests = tiny.requests(8)
        for inputs, outputs in zip(requests, _infer_all(running.url, tiny, requests, clients=8)):
            tiny.check(inputs, outputs)
        samples = metric_samples(httpx.get(f"{running.url}/metrics", timeout=10).text)
        assert samples[("galaxy_requests_total", ())] == 8
        victim = _rank_pid(running, "rank_1.py")
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        while httpx.get(f"{running.url}/healthz", timeout=10).status_code == 200:
            assert time.monotonic() - killed < 5, "the lost rank was not noticed within 5 s"
            time.sleep(0.1)
        health = httpx.get(f"{running.url}/healthz", timeout=10).json()
        assert "rank 1 (dev1) lost" in health["reason"] and "-9" in health["reason"]
        response = httpx.post(f"{running.url}/v1/infer", content=json_body(requests[0]),
                              headers={"Content-Type": "application/json"}, timeout=30)
        assert response.status_code == 503 and "rank 1 (dev1) lost" in response.json()["error"]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_a_signal_stops_everything(bundles, tiny, sig, code):
    with ServeProcess(bundles["pipeline"]) as running:
        with Client(running.url) as client:
            tiny.check(tiny.requests(1)[0], client.infer(tiny.requests(1)[0]))
        started = running.rank_pids()
        assert len(started) >= 2
        assert running.stop(sig) == code
        assert "stopped every rank" in running.log()
        assert alive(started) == []


def test_idle_ranks_wait_past_their_timeout(bundles, tiny):
    """Idle longer than the ranks' collective timeout (--timeout 2): no timeout fires, and the
    next request is answered."""
    with ServeProcess(bundles["pipeline"], extra=("--timeout", "2")) as running:
        time.sleep(4)
        with Client(running.url) as client:
            inputs = tiny.requests(2)[1]
            tiny.check(inputs, client.infer(inputs))
        assert httpx.get(f"{running.url}/healthz", timeout=10).json()["status"] == "ok"


def _rank_pid(running: ServeProcess, module: str) -> int:
    for pid in running.rank_pids():
        try:
            if module in open(f"/proc/{pid}/cmdline").read():
                return pid
        except OSError:
            continue
    raise AssertionError(f"no process runs {module}")
