"""Benchmark Galaxy against the baselines on the emulated edge cluster, side by side.

    python -m benchmarks.run [--models bert:large,gpt2:medium] [--clusters four-uneven,two-uneven]
                             [--bandwidths 100,500,1000] [--variants ...] [--repeat 3] [--seq-len 256]

For each model x cluster x bandwidth it plans every variant (benchmarks/variants.py), compiles
the bundle, runs it on the emulator (one network namespace, tc-shaped link and CPU quota per
device) and checks the output against the single-process model. Writes results.json,
results.md (table) and results.png (plot) to --out. Medians over --repeat runs after a warmup.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import write_report
from benchmarks.variants import VARIANTS, with_bandwidth
from galaxy.compiler.errors import GalaxyError
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.pipeline import capture_model as capture_source, write_plan_bundle
from galaxy.host.launcher import run_emulated

log = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("galaxy").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for model_spec in args.models.split(","):
        kind, size = model_spec.split(":")
        captured, graph, summary = capture_model(kind, size, args.seq_len)
        for cluster_name in args.clusters.split(","):
            base = load_cluster(REPO / "clusters" / f"{cluster_name}.toml")
            for mbit in (float(b) for b in args.bandwidths.split(",")):
                cluster = with_bandwidth(base, mbit * 1e6)
                for name in args.variants.split(","):
                    row = {"model": f"{kind}-{size}", "cluster": cluster_name, "mbit": mbit, "variant": name,
                           "devices": len(base.devices), "sum_gflops": sum(d.flops_per_s for d in base.devices) / 1e9,
                           "fastest_gflops": max(d.flops_per_s for d in base.devices) / 1e9}
                    row.update(_run_variant(name, summary, cluster, graph, captured, args))
                    rows.append(row)
                    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    write_report(rows, args.out, args.repeat)
    print((args.out / "results.md").read_text())
    return 0


def _run_variant(name, summary, cluster, graph, captured, args) -> dict:
    started = time.perf_counter()
    try:
        plan = VARIANTS[name].make(summary, cluster)
    except GalaxyError as exc:
        log.warning("%s: no plan: %s", name, exc)
        return {"error": str(exc).splitlines()[0]}
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-") as scratch:
        bundle = write_plan_bundle(Path(scratch) / "bundle", plan, summary, graph, captured, "benchmark", cluster)
        result = run_emulated(bundle, repeat=args.repeat, warmup=1, timeout_s=args.timeout)
    lat = result.latencies_s
    stage_ranks = [len(s.ranks) for s in plan.stages]
    log.info("%-18s %s: median %.3f s (predicted %.3f s), max error %s", name, cluster.name,
             statistics.median(lat), plan.predicted_latency_s, result.max_abs_error)
    return {"median_s": statistics.median(lat), "min_s": min(lat), "max_s": max(lat), "runs": len(lat),
            "predicted_s": plan.predicted_latency_s, "max_abs_error": max((result.max_abs_error or {}).values(), default=None),
            "within_tolerance": result.within_tolerance, "used_devices": plan.world_size,
            "stages": stage_ranks, "schedules": [str(s.schedule) for s in plan.stages], "wire_dtype": plan.wire_dtype,
            "wall_s": time.perf_counter() - started}


def capture_model(kind: str, size: str, seq_len: int):
    """models/<kind>.py at `size`: (captured, graph, summary)."""
    return capture_source(str(REPO / "models" / f"{kind}.py"), size, seq_len)


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="bert:large", help="kind:size list, e.g. bert:large,gpt2:medium")
    p.add_argument("--clusters", default="four-uneven", help="cluster files in clusters/ (names)")
    p.add_argument("--bandwidths", default="100,500,1000", help="Mbit/s, every link")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per variant (after 1 warmup)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--timeout", type=float, default=300.0, help="per network wait, seconds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
