"""Benchmark Galaxy against the baselines on the emulated edge cluster, side by side.

    python -m benchmarks.run [--models bert:large,gpt2:medium] [--clusters four-uneven,two-uneven]
                             [--bandwidths 100,500,1000] [--cpu-mode weight,quota] [--nic per-pair|shared]
                             [--variants ...] [--repeat 3] [--seq-len 256] [--reference PATH] [--profile]

For each model x cluster x bandwidth x CPU mode it plans every variant (benchmarks/variants.py),
compiles the bundle, runs it on the emulator (one network namespace and tc-shaped links per
device; its CPU share by weight on a CPU of its own, or by quota: `--cpu-mode`, docs/EMULATION.md)
and checks the output against the single-process model. Device rates are measured on this machine
first (benchmarks/calibrate.py; --no-calibrate keeps the cluster files' figures). The `reference*` variants run the
hand-written reference HMP (../shared/reference/hmp_ref.py, or --reference) in the same emulated
devices, split by the devices' GFLOP/s with an even token split; they are skipped with a note
where it is absent or the model is not BERT. A CPU mode the cluster cannot have (weight with
more devices than CPUs) gives rows with that error. Writes results.json, results.md (table)
and results.png (plot) to --out. Medians over --repeat runs after a warmup. --profile runs the
ranks with GALAXY_PROFILE=1 and keeps each rank's last per-run line (time inside collectives).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.calibrate import calibrated, measure_host, scaled
from benchmarks.reference import REFERENCE_SCRIPT, REFERENCE_VARIANTS, run_reference_variant
from benchmarks.report import write_report
from benchmarks.variants import VARIANTS, with_bandwidth
from galaxy.compiler.errors import GalaxyError
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.pipeline import capture_model as capture_source, write_plan_bundle
from galaxy.host.emulate import EmulationUnavailable
from galaxy.host.launcher import run_emulated
from galaxy.runtime.errors import UsageError

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
        host = measure_host(summary) if args.calibrate else None
        for cluster_name in args.clusters.split(","):
            base = load_cluster(REPO / "clusters" / f"{cluster_name}.toml")
            base = replace(base, shared_card=args.nic == "shared")
            for cpu_mode in args.cpu_mode.split(","):
                mode_base = _calibrated(base, host, summary, graph, captured, cpu_mode, args) if host else base
                for mbit in (float(b) for b in args.bandwidths.split(",")):
                    cluster = with_bandwidth(mode_base, mbit * 1e6)
                    for name in args.variants.split(","):
                        row = {"model": f"{kind}-{size}", "cluster": cluster_name, "mbit": mbit, "cpu_mode": cpu_mode,
                               "nic": args.nic, "variant": name, "devices": len(base.devices),
                               "sum_gflops": sum(d.flops_per_s for d in base.devices) / 1e9,
                               "fastest_gflops": max(d.flops_per_s for d in base.devices) / 1e9}
                        if name in REFERENCE_VARIANTS:
                            row.update(run_reference_variant(name, row["model"], summary.seq_len, cluster, cpu_mode, args))
                        else:
                            row.update(_run_variant(name, summary, cluster, graph, captured, cpu_mode, args))
                        rows.append(row)
                        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    write_report(rows, args.out, args.repeat)
    print((args.out / "results.md").read_text())
    return 0


def _calibrated(base, host, summary, graph, captured, cpu_mode: str, args):
    """`base` at this machine's rates, scaled so the fastest device alone is predicted as measured."""
    cluster = calibrated(base, host, cpu_mode)
    run = _run_variant("local", summary, cluster, graph, captured, cpu_mode, args)
    if "median_s" not in run:
        log.warning("calibration run failed (%s): device rates stay unscaled", run.get("error"))
        return cluster
    factor = run["predicted_s"] / run["median_s"]
    log.info("calibration %s %s: fastest device alone predicted %.3f s, measured %.3f s: rates x %.3f",
             base.name, cpu_mode, run["predicted_s"], run["median_s"], factor)
    return scaled(cluster, factor)


def _run_variant(name, summary, cluster, graph, captured, cpu_mode: str, args) -> dict:
    started = time.perf_counter()
    try:
        plan = VARIANTS[name].make(summary, cluster)
    except GalaxyError as exc:
        log.warning("%s: no plan: %s", name, exc)
        return {"error": str(exc).splitlines()[0]}
    profile: dict[int, str] = {}

    def keep_profile(rank: int, line: str) -> None:
        if ": run " in line and " in collectives (" in line:
            profile[rank] = line.split(": run ", 1)[1]
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-") as scratch:
        bundle = write_plan_bundle(Path(scratch) / "bundle", plan, summary, graph, captured, "benchmark", cluster)
        try:  # the links' card comes from the cluster (args.nic set its shared_card)
            result = run_emulated(bundle, cpu_mode=cpu_mode, repeat=args.repeat, warmup=1, timeout_s=args.timeout,
                                  env={"GALAXY_PROFILE": "1"} if args.profile else None, on_line=keep_profile)
        except (EmulationUnavailable, UsageError) as exc:  # e.g. weight mode with more devices than CPUs
            log.warning("%s: %s", name, exc)
            return {"error": str(exc).splitlines()[0]}
    lat = result.latencies_s
    stage_ranks = [len(s.ranks) for s in plan.stages]
    log.info("%-18s %s %s: median %.3f s (predicted %.3f s), max error %s", name, cluster.name, cpu_mode,
             statistics.median(lat), plan.predicted_latency_s, result.max_abs_error)
    return {"median_s": statistics.median(lat), "min_s": min(lat), "max_s": max(lat), "runs": len(lat),
            "predicted_s": plan.predicted_latency_s, "max_abs_error": max((result.max_abs_error or {}).values(), default=None),
            "within_tolerance": result.within_tolerance, "used_devices": plan.world_size,
            "stages": stage_ranks, "schedules": [str(s.schedule) for s in plan.stages], "wire_dtype": plan.wire_dtype,
            "profile": {str(rank): text for rank, text in sorted(profile.items())},
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
    p.add_argument("--cpu-mode", default="auto",
                   help="emulator CPU modes, comma-separated: weight (a CPU per device), quota (works anywhere), "
                        "auto (weight when the devices fit on a CPU each)")
    p.add_argument("--nic", default="per-pair", choices=["per-pair", "shared"],
                   help="links: a full rate per pair, or one network card per device shared by its transfers")
    names = [*VARIANTS, *REFERENCE_VARIANTS]
    p.add_argument("--variants", default=",".join([*VARIANTS, "reference"]), help=f"subset of {','.join(names)}")
    p.add_argument("--reference", type=Path, default=REFERENCE_SCRIPT,
                   help="the reference HMP script (default: ../shared/reference/hmp_ref.py or $GALAXY_REFERENCE_HMP)")
    p.add_argument("--profile", action="store_true", help="GALAXY_PROFILE=1: keep each rank's time in collectives")
    p.add_argument("--calibrate", action=argparse.BooleanOptionalAction, default=True,
                   help="give each device its CPU share of this machine's measured rates, and the overlap "
                        "efficiency of its CPU mode (benchmarks/calibrate.py); --no-calibrate: the cluster "
                        "files' figures")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per variant (after 1 warmup)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--timeout", type=float, default=300.0, help="per network wait, seconds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
