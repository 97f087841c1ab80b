"""A one-rank bundle against the plain model at the same thread count, side by side in one run.

    python -m benchmarks.single_device [--model bert:base] [--threads 1,2] [--rounds 4] [--repeat 6]

Compiles the model for one device (`--solver single`) and, per thread count and round, times
in separate processes, one after the other: the plain model (models/<kind>.py's build_model and
example_inputs, under torch.inference_mode), the bundle's rank_0.py as galaxy-run starts it,
and the same bundle with glibc told to keep freed memory (the environment-variable equivalent
of runtime.memory.retain_freed_memory). Then, in one process, the plain model and the bundle's
forward alternately (one allocator for both: what is left is the generated code's doing).
Each figure is a median over `--repeat` forwards after 2 warmups; ratios are to the plain
model of the same round. Writes results.{json,md} to --out.
"""
from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.output import finish, parser, save_rows, start
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.pipeline import capture_model, write_plan_bundle
from galaxy.compiler.planner import make_plan
from galaxy.host.launcher import run_local
from galaxy.runtime import bundle as bundle_files
from galaxy.runtime.entry import RankContext
from galaxy.runtime.memory import MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES
from galaxy.runtime.ring import Ring
from galaxy.runtime.stages import Handoff

REPO = Path(__file__).resolve().parents[1]
RETAIN_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD_BYTES), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD_BYTES)}
PLAIN = """
import statistics, sys, time, torch
sys.path.insert(0, {models!r})
import {kind} as source
torch.set_num_threads({threads})
model, inputs = source.build_model({size!r}), source.example_inputs({size!r})
times = []
with torch.inference_mode():
    for run in range({runs}):
        start = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - start)
print(statistics.median(times[2:]))
"""


def plain_process_s(kind: str, size: str, threads: int, repeat: int) -> float:
    code = PLAIN.format(models=str(REPO / "models"), kind=kind, size=size, threads=threads, runs=repeat + 2)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
    return float(done.stdout.split()[-1])


def bundle_process_s(bundle: Path, threads: int, repeat: int, env: dict | None = None) -> float:
    result = run_local(bundle, threads=threads, repeat=repeat, warmup=2, env=env, on_line=lambda rank, line: None)
    if result.within_tolerance is False:
        raise RuntimeError(f"the bundle's outputs differ from the reference: {result.max_abs_error}")
    return result.median_s


def in_process_ratio(bundle: Path, kind: str, size: str, threads: int, repeat: int) -> tuple[float, float]:
    """(plain s, bundle forward s) alternating in this process, medians."""
    sys.path.insert(0, str(REPO / "models"))
    source = importlib.import_module(kind)
    model, inputs = source.build_model(size), source.example_inputs(size)
    spec = importlib.util.spec_from_file_location("rank_0", bundle / "rank_0.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    weights = bundle_files.load_tensors(bundle / bundle_files.rank_weights(0))
    plan = bundle_files.load_plan(bundle)
    devices = tuple(plan["plan"]["devices"])
    ctx = RankContext(0, 1, devices, 60.0, ((0,),), plan, bundle, Handoff(Ring((0,), 0, 60.0, devices)))
    torch.set_num_threads(threads)
    runs = {"plain": lambda: model(**inputs), "bundle": lambda: module.forward(inputs, weights, ctx)}
    times = {name: [] for name in runs}
    with torch.inference_mode():
        for round_ in range(repeat + 2):
            for name, run in (runs.items() if round_ % 2 else reversed(runs.items())):
                start = time.perf_counter()
                run()
                if round_ >= 2:
                    times[name].append(time.perf_counter() - start)
    return statistics.median(times["plain"]), statistics.median(times["bundle"])


def table(rows: list[dict], args) -> str:
    lines = [f"BERT-{args.model.split(':')[1]}, one device, {args.repeat} forwards after 2 warmups per figure (median); "
             "ratio = bundle / plain model of the same round.", "",
             "| threads | round | plain model s | bundle s | ratio | bundle, freed memory kept s | ratio | in one process: plain s | bundle s | ratio |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['round']} | {r['plain_s']:.4f} | {r['bundle_s']:.4f} | {r['bundle_s'] / r['plain_s']:.3f} "
                     f"| {r['retained_s']:.4f} | {r['retained_s'] / r['plain_s']:.3f} | {r['in_plain_s']:.4f} "
                     f"| {r['in_bundle_s']:.4f} | {r['in_bundle_s'] / r['in_plain_s']:.3f} |")
    for threads in sorted({r["threads"] for r in rows}):
        mine = [r for r in rows if r["threads"] == threads]
        med = {k: statistics.median(r[k] / r[base] for r in mine)
               for k, base in (("bundle_s", "plain_s"), ("retained_s", "plain_s"), ("in_bundle_s", "in_plain_s"))}
        lines.append(f"| {threads} | median | | | **{med['bundle_s']:.3f}** | | **{med['retained_s']:.3f}** | | | **{med['in_bundle_s']:.3f}** |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    kind, size = args.model.split(":")
    start(args.out)
    captured, graph, summary = capture_model(str(REPO / "models" / f"{kind}.py"), size, None)
    cluster = load_cluster(REPO / "clusters" / "home-3.toml")
    rows = []
    with tempfile.TemporaryDirectory(prefix="galaxy-single-") as scratch:
        bundle = write_plan_bundle(Path(scratch) / "bundle", make_plan(summary, cluster, solver="single"),
                                   summary, graph, captured, "benchmark", cluster)
        for threads in (int(t) for t in args.threads.split(",")):
            for round_ in range(args.rounds):
                row = {"threads": threads, "round": round_,
                       "plain_s": plain_process_s(kind, size, threads, args.repeat),
                       "bundle_s": bundle_process_s(bundle, threads, args.repeat),
                       "retained_s": bundle_process_s(bundle, threads, args.repeat, RETAIN_ENV)}
                row["in_plain_s"], row["in_bundle_s"] = in_process_ratio(bundle, kind, size, threads, args.repeat)
                rows.append(row)
                save_rows(args.out, rows)
    return finish(args.out, rows, table(rows, args))


def _parse(argv):
    p = parser("benchmarks.single_device", __doc__)
    p.add_argument("--model", default="bert:base", help="kind:size of models/<kind>.py")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--repeat", type=int, default=6, help="timed forwards per figure")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "single-device")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
