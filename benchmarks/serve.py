"""What serving costs and holds: galaxy-serve against galaxy-run, a 1000-request soak, concurrency.

    python -m benchmarks.serve [--requests 1000] [--rounds 2] [--out benchmarks/results/serve]

The model is a small BERT (4 layers, hidden 256, 128 tokens, from an HF config: random weights)
so that a run of 1000 requests takes about a minute on 2 cores. Two bundles of it:
  hmp       the proportional HMP split over clusters/home-3.toml (3 ranks, collectives every layer)
  pipeline  EdgePipe's DP (one device per stage) on two devices that each hold 75% of the model,
            so it must cut the layers into two stages
Every rank runs on this machine (--local); every good answer is compared with the eager model.

1. Overhead: the same bundle through `galaxy-run --repeat` (rank 0's forward after a barrier)
   and through galaxy-serve, one request at a time from the Python client, rounds alternating.
   For galaxy-serve: the client's latency, the cluster time (coordinator dispatch -> answer, from
   the Server-Timing header), rank 0's own time for the same request (Server-Timing rank0) and
   the HTTP time (client latency - cluster - queue). The shared VM moves whole rounds by 2x, so
   the paired ratios (each request's cluster or client time over its own rank-0 time) are the
   steadier measure of what serving adds.
2. Soak: N requests in a row, every 20th malformed (a wrong name, shape, dtype, body or content
   type in turn): each good answer must equal the reference, each bad one must get a 4xx, none may
   hang (60 s client timeout), and the ranks' resident memory may not grow by 5% from request 100
   to the end.
3. Concurrency: 1, 4 and 16 clients (threads, each its own connection) sending requests as fast
   as answers come: p50/p99 latency and requests/s, for both bundles (the pipeline overlaps).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import httpx
import torch

from benchmarks.output import pyplot
from benchmarks.run import REPO
from galaxy.compiler.capture.load import load_model
from galaxy.compiler.capture.trace import capture, flatten_outputs
from galaxy.compiler.cost.memory import rank_memory_bytes
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.passes.recognise import recognise
from galaxy.compiler.passes.summarise import summarise
from galaxy.compiler.pipeline import write_plan_bundle
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan
from galaxy.host.launcher import run_local
from galaxy.serve import Client, ServeError

log = logging.getLogger("benchmarks.serve")
CONFIG = {"model_type": "bert", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
          "intermediate_size": 1024, "vocab_size": 1000, "max_position_embeddings": 128}
SEQ_LEN = 128
ATOL = RTOL = 1e-4
TOKEN = "benchmark-serve-token-0123456789"
CLIENTS = (1, 4, 16)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("galaxy").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        results = json.loads((args.out / "results.json").read_text())
        (args.out / "results.md").write_text(table(results, args))
        plot(results, args.out / "results.png")
        return 0
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-serve-") as scratch:
        model = SmallModel(Path(scratch))
        bundles = {"hmp": model.bundle("hmp", _proportional), "pipeline": model.bundle("pipeline", _two_stages)}
        results = {"overhead": overhead(bundles["hmp"], model, args),
                   "soak": soak(bundles["hmp"], model, args.requests),
                   "concurrency": [concurrency(name, path, model, clients, args.per_client)
                                   for name, path in bundles.items() for clients in CLIENTS]}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text(table(results, args))
    plot(results, args.out / "results.png")
    print((args.out / "results.md").read_text())
    ok = results["soak"]["wrong_answers"] == 0 and results["soak"]["hangs"] == 0 and results["soak"]["bad_not_4xx"] == 0
    return 0 if ok else 3


class SmallModel:
    """The benchmark's model: captured once, its eager twin kept for reference answers."""

    def __init__(self, scratch: Path):
        (scratch / "config.json").write_text(json.dumps(CONFIG))
        self.scratch = scratch
        loaded = load_model(str(scratch / "config.json"), seq_len=SEQ_LEN)
        self.module, self.captured = loaded.module, capture(loaded)
        self.graph = recognise(self.captured)
        self.summary = summarise(self.graph, self.captured)
        example = self.captured.example_inputs
        generator = torch.Generator().manual_seed(3)
        self.requests = [{**example, "input_ids": torch.randint(0, CONFIG["vocab_size"], example["input_ids"].shape,
                                                                generator=generator)} for _ in range(8)]
        with torch.no_grad():
            self.references = [flatten_outputs(self.module(**r), self.captured.output_names) for r in self.requests]

    def bundle(self, name: str, make) -> Path:
        plan = make(self.summary)
        return write_plan_bundle(self.scratch / name, plan, self.summary, self.graph, self.captured, "benchmark")

    def matches(self, i: int, outputs: dict) -> bool:
        expected = self.references[i % len(self.references)]
        return set(outputs) == set(expected) and all(
            torch.allclose(outputs[k], v, atol=ATOL, rtol=RTOL) for k, v in expected.items())


def _proportional(summary):
    return make_plan(summary, load_cluster(REPO / "clusters" / "home-3.toml"), solver="proportional")


def _two_stages(summary):
    """EdgePipe on two devices that each hold 75% of the model: two stages of whole layers."""
    base = load_cluster(REPO / "clusters" / "home-3.toml")
    table = build_cost_table(summary, base)
    whole = rank_memory_bytes(table, table.n_layers, table.kv_groups, table.columns, table.tokens, True, True)
    devices = tuple(replace(d, mem_bytes=int(0.75 * whole)) for d in base.devices[:2])
    return pipeline_dp_plan(build_cost_table(summary, replace(base, devices=devices)), max_group_devices=1)


class Server:
    """`galaxy-serve BUNDLE --local --port 0` as a process of its own; a context manager."""

    def __init__(self, bundle: Path):
        self.command = [sys.executable, "-m", "galaxy.serve.cli", str(bundle), "--local", "--port", "0", "--quiet"]
        self.url = None

    def __enter__(self) -> "Server":
        env = {**os.environ, "GALAXY_CLUSTER_TOKEN": TOKEN}
        self.proc = subprocess.Popen(self.command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        for line in self.proc.stderr:
            found = re.search(r"serving .* on (http://\S+) ", line)
            if found:
                self.url = found.group(1)
                break
            if time.monotonic() > deadline:
                break
        if self.url is None:
            self.__exit__()
            raise RuntimeError(f"galaxy-serve did not start: {self.command}")
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        return self

    def rank_pids(self) -> list[int]:
        found = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return [int(pid) for pid in found]

    def __exit__(self, *exc_info) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def _timed_infer(client: Client, inputs: dict) -> tuple[dict, float, dict]:
    """(outputs, client latency, {"cluster": s, "queue": s} from Server-Timing)."""
    from safetensors.torch import load, save

    body = save({k: v.contiguous() for k, v in inputs.items()})
    start = time.perf_counter()
    response = client._http.post("/v1/infer", content=body, headers={"Content-Type": "application/octet-stream"})
    latency = time.perf_counter() - start
    if response.status_code != 200:
        raise ServeError(response.status_code, response.text)
    timing = {part.split(";")[0].strip(): float(part.split("dur=")[1]) / 1e3
              for part in response.headers["server-timing"].split(",")}
    return load(response.content), latency, timing


def overhead(bundle: Path, model: SmallModel, args) -> list[dict]:
    rows = []
    for round_ in range(args.rounds):
        run = run_local(bundle, repeat=args.overhead_requests, warmup=3, timeout_s=60,
                        env={"GALAXY_CLUSTER_TOKEN": TOKEN})
        with Server(bundle) as server, Client(server.url) as client:
            for _ in range(3):
                client.infer(model.requests[0])
            samples = [_timed_infer(client, model.requests[0]) for _ in range(args.overhead_requests)]
        client_s = statistics.median(s[1] for s in samples)
        cluster_s = statistics.median(s[2]["cluster"] for s in samples)
        http_s = statistics.median(s[1] - s[2]["cluster"] - s[2]["queue"] for s in samples)
        rank0_s = statistics.median(s[2]["rank0"] for s in samples)
        dispatch_s = statistics.median(s[2]["cluster"] - s[2]["rank0"] for s in samples)
        rows.append({"round": round_, "galaxy_run_median_s": run.median_s, "serve_client_median_s": client_s,
                     "serve_cluster_median_s": cluster_s, "serve_http_median_s": http_s,
                     "serve_rank0_median_s": rank0_s, "serve_dispatch_median_s": dispatch_s,
                     "cluster_vs_rank0": statistics.median(s[2]["cluster"] / s[2]["rank0"] for s in samples),
                     "client_vs_rank0": statistics.median(s[1] / s[2]["rank0"] for s in samples),
                     "galaxy_run_min_s": min(run.latencies_s), "serve_cluster_min_s": min(s[2]["cluster"] for s in samples),
                     "serve_client_min_s": min(s[1] for s in samples),
                     "cluster_vs_run": cluster_s / run.median_s, "client_vs_run": client_s / run.median_s,
                     "all_correct": all(model.matches(0, s[0]) for s in samples)})
        log.info("overhead round %d: %s", round_, rows[-1])
    return rows


def _malformed(model: SmallModel, k: int) -> tuple[bytes, str]:
    from safetensors.torch import save

    good = model.requests[0]
    kind = k % 5
    if kind == 0:
        return save({("ids" if n == "input_ids" else n): t for n, t in good.items()}), "application/octet-stream"
    if kind == 1:
        return save({**good, "input_ids": good["input_ids"][:, :7].contiguous()}), "application/octet-stream"
    if kind == 2:
        return save({**good, "input_ids": good["input_ids"].float()}), "application/octet-stream"
    if kind == 3:
        return b"garbage" * 10, "application/octet-stream"
    return b'{"inputs": 3}', "application/json"


def soak(bundle: Path, model: SmallModel, requests: int) -> dict:
    wrong = hangs = bad_not_4xx = bad = 0
    latencies, memory = [], {}
    with Server(bundle) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        client = Client(server.url, timeout_s=60)
        start = time.perf_counter()
        for i in range(requests):
            try:
                if i % 20 == 19:
                    bad += 1
                    body, kind = _malformed(model, i // 20)
                    status = http.post("/v1/infer", content=body, headers={"Content-Type": kind}).status_code
                    bad_not_4xx += not 400 <= status < 500
                else:
                    outputs, latency, _ = _timed_infer(client, model.requests[i % len(model.requests)])
                    latencies.append(latency)
                    wrong += not model.matches(i, outputs)
            except httpx.TimeoutException:
                hangs += 1
            if i in (99, requests - 1):
                memory[i] = {pid: _rss_bytes(pid) for pid in server.rank_pids()}
        wall = time.perf_counter() - start
        client.close()
    growth = max(memory[requests - 1][pid] / memory[99][pid] - 1 for pid in memory[99])
    result = {"requests": requests, "malformed": bad, "wrong_answers": wrong, "hangs": hangs,
              "bad_not_4xx": bad_not_4xx, "wall_s": wall, "p50_s": _percentile(latencies, 50),
              "p99_s": _percentile(latencies, 99), "rank_rss_mib_at_100": [m / 2**20 for m in memory[99].values()],
              "rank_rss_mib_at_end": [m / 2**20 for m in memory[requests - 1].values()],
              "max_rank_memory_growth": growth}
    log.info("soak: %s", result)
    return result


def concurrency(name: str, bundle: Path, model: SmallModel, clients: int, per_client: int) -> dict:
    with Server(bundle) as server:
        with Client(server.url) as warm:
            for _ in range(3):
                warm.infer(model.requests[0])

        def one_client(c: int) -> list[tuple[int, float, dict]]:
            with Client(server.url, timeout_s=120) as client:
                out = []
                for j in range(per_client):
                    i = c * per_client + j
                    outputs, latency, _ = _timed_infer(client, model.requests[i % len(model.requests)])
                    out.append((i, latency, outputs))
                return out
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            done = [x for part in pool.map(one_client, range(clients)) for x in part]
        wall = time.perf_counter() - start
        peak = _metric(server.url, "galaxy_in_flight_requests_peak")
    latencies = [latency for _, latency, _ in done]
    row = {"bundle": name, "clients": clients, "requests": len(done), "requests_per_s": len(done) / wall,
           "p50_s": _percentile(latencies, 50), "p99_s": _percentile(latencies, 99), "peak_in_flight": peak,
           "all_correct": all(model.matches(i, outputs) for i, _, outputs in done)}
    log.info("concurrency: %s", row)
    return row


def _metric(url: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def table(results: dict, args) -> str:
    cfg = CONFIG
    lines = [f"# galaxy-serve on 2 cores, every rank local\n\nModel: BERT, {cfg['num_hidden_layers']} layers, hidden "
             f"{cfg['hidden_size']}, {SEQ_LEN} tokens (random weights). `hmp`: proportional HMP over home-3 "
             "(3 ranks); `pipeline`: two one-device stages (EdgePipe DP on two devices holding 75% each). Every "
             "answer compared with the eager model (atol = rtol = 1e-4).", "",
             f"## 1. Overhead against `galaxy-run --repeat {args.overhead_requests}` (hmp, one request at a time, "
             "medians)", "",
             "| round | galaxy-run | serve: rank 0 | serve: cluster | serve: client | dispatch (cluster - rank 0) "
             "| HTTP + client | cluster / run | client / run | cluster / rank 0, paired | client / rank 0, paired |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    rounds = results["overhead"]
    for r in rounds:
        lines.append(f"| {r['round']} | {1e3 * r['galaxy_run_median_s']:.2f} ms | {1e3 * r['serve_rank0_median_s']:.2f} ms"
                     f" | {1e3 * r['serve_cluster_median_s']:.2f} ms | {1e3 * r['serve_client_median_s']:.2f} ms | "
                     f"{1e3 * r['serve_dispatch_median_s']:.2f} ms | {1e3 * r['serve_http_median_s']:.2f} ms | "
                     f"{r['cluster_vs_run']:.3f} | {r['client_vs_run']:.3f} | {r['cluster_vs_rank0']:.3f} | "
                     f"{r['client_vs_rank0']:.3f} |")
    best = {key: min(r[key] for r in rounds) for key in ("galaxy_run_min_s", "serve_cluster_min_s", "serve_client_min_s")}
    lines += ["", "rank 0 = rank 0's own time per request inside galaxy-serve (taking the request on -> its "
              "outputs; what galaxy-run times, except that no barrier lines the ranks up first). The paired "
              "ratios divide each request's cluster or client time by its own rank-0 time, so the VM's noise, "
              "which moves whole rounds, cancels.", "",
              f"Median over rounds of the per-round ratios: cluster / run "
              f"{statistics.median(r['cluster_vs_run'] for r in rounds):.3f}, client / run "
              f"{statistics.median(r['client_vs_run'] for r in rounds):.3f}; HTTP and client median "
              f"{1e3 * statistics.median(r['serve_http_median_s'] for r in rounds):.2f} ms. Fastest single request "
              f"of all rounds (the least disturbed by the shared VM): galaxy-run {1e3 * best['galaxy_run_min_s']:.2f} ms, "
              f"serve cluster {1e3 * best['serve_cluster_min_s']:.2f} ms "
              f"({best['serve_cluster_min_s'] / best['galaxy_run_min_s']:.3f}x), serve client "
              f"{1e3 * best['serve_client_min_s']:.2f} ms ({best['serve_client_min_s'] / best['galaxy_run_min_s']:.3f}x)."]
    s = results["soak"]
    lines += ["", f"## 2. {s['requests']} requests in a row (hmp), {s['malformed']} malformed", "",
              "| wrong answers | hangs | malformed not 4xx | p50 | p99 | wall | rank RSS at 100 -> end (MiB) | max growth |",
              "|---|---|---|---|---|---|---|---|",
              f"| {s['wrong_answers']} | {s['hangs']} | {s['bad_not_4xx']} | {1e3 * s['p50_s']:.2f} ms | "
              f"{1e3 * s['p99_s']:.2f} ms | {s['wall_s']:.1f} s | "
              + ", ".join(f"{a:.0f} -> {b:.0f}" for a, b in zip(s["rank_rss_mib_at_100"], s["rank_rss_mib_at_end"]))
              + f" | {100 * s['max_rank_memory_growth']:+.2f}% |",
              "", f"## 3. Concurrent clients ({args.per_client} requests each after 3 warmups)", "",
              "| bundle | clients | requests/s | p50 | p99 | most in flight on the ranks | all correct |",
              "|---|---|---|---|---|---|---|"]
    for r in results["concurrency"]:
        lines.append(f"| {r['bundle']} | {r['clients']} | {r['requests_per_s']:.1f} | {1e3 * r['p50_s']:.1f} ms | "
                     f"{1e3 * r['p99_s']:.1f} ms | {r['peak_in_flight']:.0f} | {r['all_correct']} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    fig, ((medians, paired), (rates, tails)) = plt.subplots(2, 2, figsize=(11, 7.5))
    rounds = results["overhead"]
    xs = list(range(len(rounds)))
    for offset, key, label in ((-0.27, "galaxy_run_median_s", "galaxy-run --repeat"),
                               (-0.09, "serve_rank0_median_s", "serve: rank 0's own"),
                               (0.09, "serve_cluster_median_s", "serve: cluster"),
                               (0.27, "serve_client_median_s", "serve: client (HTTP incl.)")):
        medians.bar([x + offset for x in xs], [1e3 * r[key] for r in rounds], width=0.18, label=label)
    medians.set_xticks(xs, [str(r["round"]) for r in rounds])
    medians.set(xlabel="round (alternating, seconds apart)", ylabel="median latency (ms)",
                title="one request at a time: the VM moves whole rounds")
    medians.legend(fontsize=7)
    paired.plot(xs, [r["cluster_vs_rank0"] for r in rounds], "o-", label="cluster / rank 0 (same request)")
    paired.plot(xs, [r["client_vs_rank0"] for r in rounds], "s-", label="client / rank 0 (same request)")
    paired.axhline(1.05, color="grey", ls=":", label="+5%")
    paired.set_xticks(xs, [str(r["round"]) for r in rounds])
    paired.set(xlabel="round", ylabel="median of per-request ratios", title="what serving adds, paired per request")
    paired.legend(fontsize=7)
    for bundle, marker in (("hmp", "o"), ("pipeline", "s")):
        rows = [r for r in results["concurrency"] if r["bundle"] == bundle]
        clients = [r["clients"] for r in rows]
        rates.plot(clients, [r["requests_per_s"] for r in rows], marker=marker, label=bundle)
        tails.plot(clients, [1e3 * r["p50_s"] for r in rows], marker=marker, label=f"{bundle} p50")
        tails.plot(clients, [1e3 * r["p99_s"] for r in rows], marker=marker, ls="--", label=f"{bundle} p99")
    for ax, label in ((rates, "requests/s"), (tails, "latency (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(CLIENTS), [str(c) for c in CLIENTS])
        ax.set(xlabel="concurrent clients", ylabel=label)
        ax.legend(fontsize=7)
    rates.set_title("throughput (the pipeline overlaps requests)")
    tails.set_title("latency under load (requests queue)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="soak: requests in a row (every 20th malformed)")
    p.add_argument("--rounds", type=int, default=8, help="overhead: alternating rounds")
    p.add_argument("--overhead-requests", type=int, default=15, help="overhead: requests per round")
    p.add_argument("--per-client", type=int, default=12, help="concurrency: requests per client")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve")
    p.add_argument("--report-only", action="store_true", help="rewrite results.md and results.png from results.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
