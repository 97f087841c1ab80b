"""The profile and link JSON documents, the printed tables and the TOML to paste.

Profile (format_version 1; `ir/cluster_file.py` reads it, PROFILE_KEYS lists every key):

    format_version           1
    device, torch, threads   hostname, torch version, intra-op threads it was measured with
    flops_per_s              the rate the cost model uses: one layer's GEMM FLOPs / their time
    gemm_flops_per_s         {"rows x in x out": FLOP/s} per GEMM shape of the layer
    attention_flops_per_s    SDPA, counting its two matrix products (4 b h s^2 d)
    elementwise_bytes_per_s  layer_norm, add, GELU: bytes read + written / time
    gemm_rows_speed          [[rows, speed], ...]: the layer's GEMMs on 16-128 rows, FLOP rate relative
                             to the whole sequence (what token tiles cost, cost/tiling.py)
    comm_cpu_s_per_byte      CPU seconds per byte sent + received (gloo over loopback)
    gemv_bytes_per_s         a decode step's GEMVs: weight bytes streamed from memory per second
    dispatch_s_per_op        a decode step's fixed cost per op
    measured_at              ISO 8601, UTC
    shapes, method           what was measured and how (repeats, warmup, statistic)
"""
from __future__ import annotations

import json
import math
import socket
import statistics
from datetime import datetime, timezone
from pathlib import Path

import torch

from galaxy.compiler.ir.cluster_file import PROFILE_FORMAT_VERSION
from galaxy.compiler.profile.device import BUSY_RATIO, DeviceRates
from galaxy.compiler.profile.link import LinkResult

MB = 1 << 20


def device_profile(rates: DeviceRates, comm: LinkResult) -> dict:
    """The profile document of this device; comm is the loopback pair run on this machine."""
    return {
        "format_version": PROFILE_FORMAT_VERSION,
        "device": socket.gethostname(),
        "torch": torch.__version__,
        "threads": rates.threads,
        "flops_per_s": rates.flops_per_s,
        "gemm_flops_per_s": rates.gemm_flops_per_s,
        "attention_flops_per_s": rates.attention_flops_per_s,
        "elementwise_bytes_per_s": rates.elementwise_bytes_per_s,
        "gemm_rows_speed": [list(point) for point in rates.rows_speed],
        "comm_cpu_s_per_byte": statistics.fmean(comm.comm_cpu_s_per_byte),
        "gemv_bytes_per_s": rates.gemv_bytes_per_s,
        "dispatch_s_per_op": rates.dispatch_s_per_op,
        "measured_at": now(),
        "shapes": rates.shapes.to_json(),
        "method": {**rates.method.to_json(), "gemm_wall_over_cpu_time": rates.busy_ratio,
                   "comm": {"what": "gloo ping-pong between two local processes over loopback; CPU time "
                                    "(time.process_time) per byte sent + received, mean of both ranks",
                            "sizes_bytes": list(comm.config.sizes_bytes), "repeats": comm.config.repeats,
                            "per_rank_s_per_byte": list(comm.comm_cpu_s_per_byte)}},
    }


def link_document(result: LinkResult) -> dict:
    return {**result.to_json(), "measured_at": now()}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json(path: str | Path, document: dict) -> Path:
    path = Path(path)
    if path.parent != Path(""):
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path


def problems(document: dict, keys: tuple[str, ...]) -> list[str]:
    """Keys among `keys` that are missing or not positive finite numbers (a sanity check)."""
    bad = []
    for key in keys:
        value = document.get(key)
        if isinstance(value, dict):
            bad += [f"{key}[{k}]" for k, v in value.items() if not _positive(v)]
        elif not _positive(value):
            bad.append(key)
    return bad


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


# --- printing ----------------------------------------------------------------------------------

def profile_table(rates: DeviceRates, comm: LinkResult, document: dict) -> str:
    m = rates.method
    rows = [f"galaxy-profile {document['device']} (torch {document['torch']}, {rates.threads} thread"
            f"{'s' if rates.threads != 1 else ''}), shapes of {rates.shapes.source}",
            f"median of {m.repeats} timed repeats after {m.warmup} warmup calls "
            f"(each repeat >= {m.min_repeat_s * 1e3:g} ms of calls)",
            f"  {'kind':<12}{'block':<22}{'shape':<16}{'rate':>16}{'median':>12}"]
    for g in rates.gemms:
        rows.append(_row("GEMM", g.name + (f" x{g.count}" if g.count > 1 else ""), g.key,
                         f"{g.rate / 1e9:.1f} GFLOP/s", g.timing.median_s))
    rows.append(_row("GEMM", "layer -> flops_per_s", "", f"{rates.flops_per_s / 1e9:.1f} GFLOP/s", None))
    if rates.busy_ratio is not None:
        rows.append(f"  {'':<12}(wall time / CPU time {rates.busy_ratio:.2f}: "
                    + ("the machine was busy, rates are low)" if rates.busy_ratio > BUSY_RATIO
                       else "no contention seen)"))
    a = rates.attention
    rows.append(_row("attention", "sdpa (bool mask)", a.key, f"{a.rate / 1e9:.1f} GFLOP/s", a.timing.median_s))
    for e in rates.elementwise:
        rows.append(_row("elementwise", e.name, e.key, f"{e.rate / 1e9:.2f} GB/s", e.timing.median_s))
    rows.append(_row("elementwise", "all -> bytes_per_s", "", f"{rates.elementwise_bytes_per_s / 1e9:.2f} GB/s",
                     None))
    if rates.gemv is not None:
        rows.append(_row("GEMV", "decode step", rates.gemv.key, f"{rates.gemv.rate / 1e9:.2f} GB/s",
                         rates.gemv.timing.median_s))
        rows.append(_row("dispatch", "one op", rates.dispatch.key, f"{rates.dispatch_s_per_op * 1e6:.1f} us/op", None))
    sizes = f"{comm.config.sizes_bytes[0] // MB}-{comm.config.sizes_bytes[-1] // MB} MB"
    r0, r1 = comm.comm_cpu_s_per_byte
    rows.append(_row("comm CPU", "gloo loopback", sizes, f"{document['comm_cpu_s_per_byte'] * 1e9:.2f} ns/B",
                     None) + f"   (rank 0 {r0 * 1e9:.2f}, rank 1 {r1 * 1e9:.2f}; {comm.config.repeats} round "
                             f"trips per size)")
    return "\n".join(rows)


def _row(kind: str, block: str, shape: str, rate: str, median_s: float | None) -> str:
    median = f"{median_s * 1e3:.3f} ms" if median_s is not None else ""
    return f"  {kind:<12}{block:<22}{shape:<16}{rate:>16}{median:>12}".rstrip()


def device_toml(document: dict, profile_path: str) -> str:
    return "\n".join([
        "# in the cluster TOML (the profile path is relative to the TOML file):",
        "[[devices]]",
        f'name = "{_toml_name(document["device"])}"',
        'memory = "8 GiB"                 # the memory Galaxy may use on this device: set it',
        f'profile = "{profile_path}"  # flops_per_s, attention_flops_per_s, comm_cpu_s_per_byte, decode rates'])


def link_table(result: LinkResult) -> str:
    c = result.config
    rows = [f"link {result.hosts[0]} (rank 0) <-> {result.hosts[1]} (rank 1), gloo ping-pong, median of "
            f"{c.repeats} round trips per size after {c.warmup} warmup ({c.small_repeats} for alpha)",
            f"  alpha (1-float half round trip)   {result.alpha_s * 1e3:9.4f} ms   (fastest "
            f"{result.alpha_spread_s[0] * 1e3:.4f}, 90th percentile {result.alpha_spread_s[1] * 1e3:.4f})",
            f"  beta (slope over {c.sizes_bytes[0] // MB}-{c.sizes_bytes[-1] // MB} MB)         "
            f"{result.beta_s_per_byte * 1e9:9.4f} ns/byte = {result.bandwidth_bytes_per_s * 8 / 1e6:.0f} Mbit/s",
            f"  comm CPU per byte sent+received   rank 0 {result.comm_cpu_s_per_byte[0] * 1e9:.2f} ns, "
            f"rank 1 {result.comm_cpu_s_per_byte[1] * 1e9:.2f} ns",
            "  size      half round trip"]
    rows += [f"  {b // MB:>3} MB   {t * 1e3:10.3f} ms" for b, t in zip(c.sizes_bytes, result.half_rtt_s)]
    return "\n".join(rows)


def link_toml(result: LinkResult) -> str:
    bandwidth = f'"{result.bandwidth_bytes_per_s * 8 / 1e6:.0f} Mbit/s"'
    latency = f'"{result.alpha_s * 1e3:.3f} ms"'
    a, b = (_toml_name(h) for h in result.hosts)
    if a == b:  # both ends on one machine (--link-local): no pair of device names to give
        a, b = "DEVICE_A", "DEVICE_B"
    return "\n".join([
        "# in the cluster TOML, for every pair of devices:",
        "[links]", f"bandwidth = {bandwidth}", f"latency = {latency}",
        "# or for this pair only (use the [[devices]] names):",
        "[[links.override]]", f'between = ["{a}", "{b}"]', f"bandwidth = {bandwidth}", f"latency = {latency}",
        "# each device's comm_cpu_ns_per_byte over this real link (overrides its profile's loopback figure):",
        f"#   {a}: comm_cpu_ns_per_byte = {result.comm_cpu_s_per_byte[0] * 1e9:.2f}",
        f"#   {b}: comm_cpu_ns_per_byte = {result.comm_cpu_s_per_byte[1] * 1e9:.2f}"])


def _toml_name(host: str) -> str:
    """A device name the cluster reader accepts (letters, digits, '-', '_', '.')."""
    name = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in host).strip("-_.")
    return name or "device"
