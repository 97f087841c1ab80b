"""Requests per second of the latency-optimal plan vs the throughput plan, on the emulated cluster.

    python -m benchmarks.throughput [--model bert:large] [--cluster four-uneven]
                                    [--bandwidths 100,500,1000] [--requests 8] [--repeat 2]

For each bandwidth it plans the model twice (`--objective latency` and `throughput`), compiles
both bundles, and streams --requests copies of the example input through each on the emulator
(one network namespace, tc-shaped link and CPU quota per device), --repeat times after a warmup
request. Every request's outputs are checked against the single-process model. Writes
results.json, results.md (table) and results.png to --out. Needs root (the emulator).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.run import REPO, capture_model
from benchmarks.variants import with_bandwidth
from benchmarks.output import pyplot
from galaxy.compiler.cost.throughput import s_per_request
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.pipeline import write_plan_bundle
from galaxy.compiler.planner import make_plan
from galaxy.host.launcher import run_emulated

log = logging.getLogger("benchmarks.throughput")
OBJECTIVES = ("latency", "throughput")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("galaxy").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    kind, size = args.model.split(":")
    captured, graph, summary = capture_model(kind, size, args.seq_len)
    base = load_cluster(REPO / "clusters" / f"{args.cluster}.toml")
    rows = []
    for mbit in (float(b) for b in args.bandwidths.split(",")):
        cluster = with_bandwidth(base, mbit * 1e6)
        for objective in OBJECTIVES:
            plan = make_plan(summary, cluster, objective=objective)
            with tempfile.TemporaryDirectory(prefix="galaxy-bench-") as scratch:
                bundle = write_plan_bundle(Path(scratch) / "bundle", plan, summary, graph, captured, "benchmark", cluster)
                result = run_emulated(bundle, requests=args.requests, repeat=args.repeat, warmup=1,
                                      timeout_s=args.timeout)
            row = {"model": f"{kind}-{size}", "cluster": args.cluster, "mbit": mbit, "objective": objective,
                   "stages": [len(s.ranks) for s in plan.stages], "devices": list(plan.devices),
                   "predicted_latency_s": plan.predicted_latency_s,
                   "predicted_s_per_request": s_per_request(plan, plan.predicted_blocks),
                   "requests": args.requests, "requests_per_s": result.requests_per_s,
                   "median_requests_per_s": statistics.median(result.requests_per_s),
                   "median_latency_s": result.median_s,
                   "max_abs_error": max((result.max_abs_error or {}).values(), default=None),
                   "within_tolerance": result.within_tolerance}
            log.info("%s %g Mbit/s: %.3f requests/s (predicted %.3f), within tolerance %s", objective, mbit,
                     row["median_requests_per_s"], predicted_rate(row), result.within_tolerance)
            rows.append(row)
            (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text(table(rows, args))
    plot(rows, args.out / "results.png")
    print((args.out / "results.md").read_text())
    return 0 if all(r["within_tolerance"] for r in rows) else 3


def table(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [f"{args.model} on {args.cluster} (emulated), {args.requests} requests streamed, median of "
             f"{args.repeat} stream(s) after 1 warmup request. Plan: ranks per stage (1+1+1 = three "
             "one-device stages). Predicted steady state = 1 / the busiest stage's time per request (a "
             "one-stage plan: 1 / its latency); predicted for M requests = M / (latency + (M - 1) x "
             "busiest stage), the pipeline filling and draining once.", "",
             "| link | objective | plan | requests/s | predicted, M requests | pred. error | predicted, steady "
             "| latency per request (s) | vs latency plan | max abs error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    latency_rate = {r["mbit"]: r["median_requests_per_s"] for r in rows if r["objective"] == "latency"}
    for r in rows:
        rate, steady, predicted = r["median_requests_per_s"], 1 / r["predicted_s_per_request"], predicted_rate(r)
        err = f"{r['max_abs_error']:.1e}" if r["max_abs_error"] is not None else "-"
        ok = "" if r["within_tolerance"] else " (NOT within tolerance)"
        lines.append(f"| {r['mbit']:g} Mbit/s | {r['objective']} | {'+'.join(map(str, r['stages']))} "
                     f"| {rate:.3f} | {predicted:.3f} | {100 * (predicted - rate) / rate:+.0f}% | {steady:.3f} "
                     f"| {r['median_latency_s']:.2f} | {rate / latency_rate[r['mbit']]:.2f}x | {err}{ok} |")
    return "\n".join(lines) + "\n"


def predicted_rate(row: dict) -> float:
    """Requests/s predicted for a stream of M: the first takes the latency, each later one a slot."""
    m = row["requests"]
    return m / (row["predicted_latency_s"] + (m - 1) * row["predicted_s_per_request"])


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    bandwidths = sorted({r["mbit"] for r in rows})
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for i, objective in enumerate(OBJECTIVES):
        items = [next(r for r in rows if r["mbit"] == b and r["objective"] == objective) for b in bandwidths]
        xs = [j + 0.4 * i for j in range(len(bandwidths))]
        ax.bar(xs, [r["median_requests_per_s"] for r in items], 0.4, label=f"{objective} plan, measured")
        ax.scatter(xs, [predicted_rate(r) for r in items], color="black", marker="_", s=400,
                   label=f"predicted for {items[0]['requests']} requests" if i == 0 else None, zorder=3)
    ax.set_xticks([j + 0.2 for j in range(len(bandwidths))], [f"{b:g} Mbit/s" for b in bandwidths])
    ax.set_ylabel("requests per second")
    ax.set_title(f"{rows[0]['model']} on {rows[0]['cluster']}: streaming {rows[0]['requests']} requests")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="bert:large", help="kind:size, e.g. bert:large")
    p.add_argument("--cluster", default="four-uneven", help="a cluster file in clusters/ (name)")
    p.add_argument("--bandwidths", default="100,500,1000", help="Mbit/s, every link")
    p.add_argument("--requests", type=int, default=8, help="requests per stream (at least 2)")
    p.add_argument("--repeat", type=int, default=2, help="streams per plan (after 1 warmup request)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--timeout", type=float, default=300.0, help="per network wait, seconds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "throughput")
    args = p.parse_args(argv)
    if args.requests < 2:
        p.error("--requests must be at least 2: one request is a latency run (python -m benchmarks.run)")
    return args


if __name__ == "__main__":
    sys.exit(main())
