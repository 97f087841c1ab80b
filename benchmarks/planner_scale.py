"""How long planning takes as the household grows: solver time for 2-16 devices.

    python -m benchmarks.planner_scale [--models llama:70b,bert:base] [--devices 2,4,8,12,16]

Uses stored model summaries (tests/golden/plans/*.json) so no model is exported: planning sees
numbers only. Devices are drawn from a fixed mix of edge devices (speeds 8-80 GFLOP/s, memory
4-112 GiB) on 1 Gbit/s links. Prints a table: devices used, predicted latency, total solve time.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.cluster import Cluster, Device, Link
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner import make_plan

REPO = Path(__file__).resolve().parents[1]
# (GFLOP/s, GiB): desktops, mini-PCs, laptops, Jetsons, phones.
DEVICE_MIX = [(80, 112), (64, 64), (48, 32), (40, 16), (32, 16), (24, 8), (16, 8), (8, 4)]


def household(n: int) -> Cluster:
    devices = tuple(Device(f"dev{i:02d}", DEVICE_MIX[i % len(DEVICE_MIX)][1] * 2**30,
                           DEVICE_MIX[i % len(DEVICE_MIX)][0] * 1e9) for i in range(n))
    return Cluster(f"mix-{n}", devices, Link(125e6, 2e-4))


def summary_of(model: str) -> ModelSummary:
    kind, size = model.split(":")
    for path in sorted((REPO / "tests" / "golden" / "plans").glob(f"{kind}-{size}__*.json")):
        return ModelSummary.from_json(json.loads(path.read_text())["model"])
    raise SystemExit(f"no stored summary for {model}; run galaxy-compile --plan-only --save-plan first")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.planner_scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="llama:70b,bert:base")
    p.add_argument("--devices", default="2,4,8,12,16")
    args = p.parse_args(argv)
    print("| model | devices | used | predicted latency | solve time |")
    print("|---|---|---|---|---|")
    for model in args.models.split(","):
        summary = summary_of(model)
        for n in (int(d) for d in args.devices.split(",")):
            start = time.perf_counter()
            try:
                plan = make_plan(summary, household(n))
                used, latency = str(plan.world_size), f"{plan.predicted_latency_s:.3f} s"
            except InfeasiblePlanError as exc:
                used, latency = "-", f"does not fit ({str(exc).split(':')[0]})"
            print(f"| {model} | {n} | {used} | {latency} | {time.perf_counter() - start:.1f} s |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
