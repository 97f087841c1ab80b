"""The hand-written reference HMP (../shared/reference/hmp_ref.py) inside the same emulated devices.

The reference is a measuring stick, not part of Galaxy: a short two-or-more-device BERT
forward with uneven heads and columns, ring all-gather / reduce-scatter and, with --overlap,
each collective fused with its neighbouring GEMM at the granularity of the ranks' own chunks.
It is run from where it lies (`REFERENCE_SCRIPT`, or GALAXY_REFERENCE_HMP, or --reference),
one process per emulated device, started the way the benchmarks start rank modules, and it
reports its own median latency and max error against the single-process model (rank 0).
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from benchmarks.emulated import run_processes
from galaxy.compiler.ir.cluster import Cluster
from galaxy.host.emulate import EmulatedCluster
from galaxy.runtime.errors import GalaxyRuntimeError

log = logging.getLogger("benchmarks")

REFERENCE_SCRIPT = Path(os.environ.get("GALAXY_REFERENCE_HMP",
                                       Path(__file__).resolve().parents[2] / "shared" / "reference" / "hmp_ref.py"))
SHAPES = ("tiny", "base", "large")  # the BERT sizes hmp_ref.py knows
# variant -> (chunk overlap, wire dtype): the reference as measured in DESIGN.md, without its
# overlap, and with fp16 activations on the wire
REFERENCE_VARIANTS = {"reference": (True, "float32"), "reference-no-overlap": (False, "float32"),
                      "reference-fp16": (True, "float16")}
_RESULT = re.compile(r"median_s=(?P<median>[\d.]+) min_s=(?P<min>[\d.]+) max_err=(?P<err>\S+)")


@dataclass(frozen=True)
class ReferenceResult:
    median_s: float
    min_s: float
    max_abs_error: float
    heads_columns_tokens: str  # the split it ran, as it printed it


def unavailable_reason(script: Path, model: str) -> str | None:
    """Why the reference cannot run for `model` ("bert-large"), or None when it can."""
    if not script.is_file():
        return f"reference script {script} not found (set --reference or GALAXY_REFERENCE_HMP)"
    kind, _, size = model.partition("-")
    if kind != "bert" or size not in SHAPES:
        return f"the reference implements BERT {'/'.join(SHAPES)} only, not {model}"
    return None


def reference_args(shape: str, seq_len: int, split: Sequence[float], token_split: Sequence[float],
                   overlap: bool, wire_dtype: str, repeat: int) -> list[str]:
    """hmp_ref.py's options after RANK WORLD ADDR PORT."""
    args = ["--shape", shape, "--seq", str(seq_len), "--split", _weights(split),
            "--tok-split", _weights(token_split), "--wire", wire_dtype, "--reps", str(repeat)]
    return args + (["--overlap"] if overlap else [])


def run_reference(script: Path, emulator: EmulatedCluster, args: Sequence[str],
                  timeout_s: float) -> ReferenceResult:
    """Every rank of the reference in its emulated device (started), rank 0's report parsed."""
    def argv(rank: int) -> list[str]:
        return [sys.executable, "-u", str(script), str(rank), str(emulator.size), emulator.master_addr,
                str(emulator.master_port), *args, "--threads", str(emulator.threads(rank))]

    report = run_processes(emulator, argv, timeout_s)[0]
    match = _RESULT.search(report)
    if not match:
        raise RuntimeError(f"reference rank 0 printed no result: {report.strip()[-300:]}")
    split = report[report.find("heads="):match.start()].strip()
    return ReferenceResult(float(match["median"]), float(match["min"]), float(match["err"]), split)


def run_reference_variant(name: str, model: str, seq_len: int, cluster: Cluster, cpu_mode: str, args) -> dict:
    """A benchmark row for reference variant `name` on every device of `cluster`: heads and
    columns split by the devices' GFLOP/s, tokens evenly (as the reference was measured)."""
    why_not = unavailable_reason(args.reference, model)
    if why_not:
        log.warning("%s: skipped: %s", name, why_not)
        return {"error": f"skipped: {why_not}"}
    overlap, wire = REFERENCE_VARIANTS[name]
    started = time.perf_counter()
    names = [d.name for d in cluster.devices]
    try:
        emulator = EmulatedCluster.from_cluster_json(cluster.to_json(), names, cpu_mode=cpu_mode,
                                                     shared_nic=args.nic == "shared")
    except GalaxyRuntimeError as exc:
        return {"error": str(exc).splitlines()[0]}
    split = [d.flops_per_s for d in cluster.devices]
    with emulator:
        result = run_reference(args.reference, emulator, reference_args(
            model.partition("-")[2], seq_len, split, [1.0] * len(split), overlap, wire, args.repeat), args.timeout * 4)
    log.info("%-18s %s %s: median %.3f s, max error %.1e (%s)", name, cluster.name, cpu_mode, result.median_s,
             result.max_abs_error, result.heads_columns_tokens)
    return {"median_s": result.median_s, "min_s": result.min_s, "max_s": None, "runs": args.repeat,
            "predicted_s": None, "max_abs_error": result.max_abs_error, "within_tolerance": None,
            "used_devices": len(names), "stages": [len(names)], "schedules": ["hmp_ref.py"], "wire_dtype": wire,
            "split": result.heads_columns_tokens, "wall_s": time.perf_counter() - started}


def _weights(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)
