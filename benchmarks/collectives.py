"""Ring against direct collectives on the emulated cluster, side by side in one run.

    python -m benchmarks.collectives [--devices 2,3,4] [--bandwidths 100,500,1000]
        [--models base,large] [--cpu-mode weight,quota] [--nic per-pair,shared] [--repeat 9]

For every CPU mode x network-card model x device count x bandwidth it starts one emulated
cluster (CPU shares `SHARES[n]`, links at the bandwidth) and runs benchmarks/collective_worker.py
in every device: the all-gather and reduce-scatter of BERT's hidden states (256 tokens split
in proportion to the shares), plain and fused with the GEMM next to them (the QKV projection
after the all-gather, the MLP's down projection before the reduce-scatter), by ring and direct,
round-robin, a barrier before each call; and a whole HMP layer (QKV, attention, out projection,
MLP) with its four collectives plain, fused by ring, and fused direct, layers back to back. A
case's time is the slowest rank's per call (per layer), median over rounds. Next to each, the
alpha-beta prediction (alpha = 0; `link_time_s`). Writes results.{json,md,png} to --out.
"""
from __future__ import annotations

import json
import logging
import statistics
import sys
from pathlib import Path

from benchmarks.emulated import run_processes
from benchmarks.output import finish, parser, pyplot, save_figure, save_rows, start
from galaxy.host.emulate import EmulatedCluster
from galaxy.runtime.splits import split_sizes

log = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]
SHARES = {2: [1.0, 0.5], 3: [0.8, 0.4, 0.4], 4: [0.8, 0.4, 0.4, 0.2]}  # two-uneven, four-uneven
BERT = {"base": dict(hidden=768, heads=12, head_dim=64, intermediate=3072),
        "large": dict(hidden=1024, heads=16, head_dim=64, intermediate=4096)}
OPS = ("all_gather", "reduce_scatter", "gather+qkv", "down+scatter")


def link_time_s(algorithm: str, tokens: list[int], token_bytes: float, bandwidth: float, shared_nic: bool) -> float:
    """Link seconds of one uneven all-gather or reduce-scatter (the same for both), alpha = 0.

    ring: n - 1 steps, each waits for the largest chunk. direct, a rate per pair: every pair at
    once, the largest chunk. direct, one network card per device: device d sends (n - 1) x_d
    and receives S - x_d in an all-gather (mirrored in a reduce-scatter), serialised on its
    card, full duplex: the busiest card sets the time."""
    n, largest = len(tokens), max(tokens)
    if n < 2:
        return 0.0
    if algorithm == "ring":
        return (n - 1) * largest * token_bytes / bandwidth
    if not shared_nic:
        return largest * token_bytes / bandwidth
    busiest = max(max((n - 1) * x, sum(tokens) - x) for x in tokens)
    return busiest * token_bytes / bandwidth


def measure(cpu_mode: str, shared_nic: bool, devices: int, mbit: float, args) -> dict[str, list[list[float]]]:
    """Per case, per rank, seconds per round, from one emulated cluster."""
    shares = SHARES[devices]
    config = {"shares": shares, "seq_len": args.seq_len, "models": {m: BERT[m] for m in args.models.split(",")},
              "repeat": args.repeat, "warmup": 1, "calls": args.calls, "layers": args.layers, "threads": 1,
              "timeout_s": args.timeout}
    bandwidth = mbit * 1e6 / 8
    emulator = EmulatedCluster(shares, bandwidth, names=[f"dev{k}" for k in range(devices)], cpu_mode=cpu_mode,
                               nic_bytes_per_s=bandwidth if shared_nic else None)
    with emulator:
        outputs = run_processes(emulator, lambda rank: [
            sys.executable, "-u", "-m", "benchmarks.collective_worker", str(rank), str(devices),
            emulator.master_addr, str(emulator.master_port), json.dumps(config)], args.timeout * 4, cwd=REPO)
    return json.loads(outputs[0].strip().splitlines()[-1])


def summarise(per_rank: dict[str, list[list[float]]], cpu_mode: str, shared_nic: bool, devices: int,
              mbit: float, seq_len: int) -> list[dict]:
    rows = []
    tokens = split_sizes(seq_len, SHARES[devices])
    for case, ranks in per_rank.items():
        model, op, algorithm = case.split(" ", 2)
        slowest = [max(r) for r in zip(*ranks)]
        row = {"cpu_mode": cpu_mode, "nic": "shared" if shared_nic else "per-pair", "devices": devices,
               "mbit": mbit, "model": model, "op": op, "algorithm": algorithm,
               "median_s": statistics.median(slowest), "min_s": min(slowest), "max_s": max(slowest),
               "rank_median_s": [statistics.median(r) for r in ranks], "tokens": tokens}
        if op in OPS and algorithm in ("ring", "direct"):
            row["link_s"] = link_time_s(algorithm, tokens, BERT[model]["hidden"] * 4, mbit * 1e6 / 8, shared_nic)
        rows.append(row)
    return rows


def table(rows: list[dict], repeat: int) -> str:
    """One line per cluster and model: each op by ring and direct, their ratio, and the link
    time predicted for each (alpha = 0)."""
    lines = [f"Milliseconds per collective, slowest rank, median of {repeat} rounds (all cases round-robin in one "
             "emulated cluster per line, a barrier before each call); `pred` is the alpha-beta link time with "
             "alpha = 0; fused = the collective with its GEMM (QKV after the all-gather, MLP down before the "
             "reduce-scatter), plain = the same without overlap; `gemm` = that GEMM alone on the whole sequence "
             "(slowest rank); layer = milliseconds per HMP layer, layers back to back, its four collectives plain, "
             "fused by ring or fused direct, and `compute` the same work with nothing sent.", ""]
    header = ("| cpu | nic | n | link | model | AG ring (pred) | AG direct (pred) | ring/direct "
              "| RS ring (pred) | RS direct (pred) | ring/direct | AG+QKV plain / ring / direct / gemm "
              "| down+RS plain / ring / direct / gemm | layer plain / ring / direct / compute |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    groups: dict[tuple, dict] = {}
    for r in rows:
        key = (r["cpu_mode"], r["nic"], r["devices"], r["mbit"], r["model"])
        groups.setdefault(key, {})[(r["op"], r["algorithm"])] = r
    for (cpu, nic, n, mbit, model), cell in groups.items():
        def ms(op, algorithm, pred=False):
            r = cell.get((op, algorithm))
            if r is None:
                return "-"
            text = f"{1e3 * r['median_s']:.1f}"
            return text + (f" ({1e3 * r['link_s']:.1f})" if pred and "link_s" in r else "")

        def ratio(op):
            ring, direct = cell.get((op, "ring")), cell.get((op, "direct"))
            return f"{ring['median_s'] / direct['median_s']:.2f}x" if ring and direct else "-"
        fused = [" / ".join(ms(op, a) for a in ("plain", "ring", "direct")) + " / " + ms(gemm, "alone")
                 for op, gemm in (("gather+qkv", "qkv_gemm"), ("down+scatter", "down_gemm"))]
        lines.append(f"| {cpu} | {nic} | {n} | {mbit:g} Mbit/s | bert-{model} | {ms('all_gather', 'ring', True)} "
                     f"| {ms('all_gather', 'direct', True)} | {ratio('all_gather')} | {ms('reduce_scatter', 'ring', True)} "
                     f"| {ms('reduce_scatter', 'direct', True)} | {ratio('reduce_scatter')} | {fused[0]} | {fused[1]} "
                     f"| {' / '.join(ms('layer', a) for a in ('plain', 'ring', 'direct', 'compute'))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    panels = sorted({(r["cpu_mode"], r["nic"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (cpu, nic) in zip(axes[0], panels):
        for op, style in (("all_gather", "-"), ("reduce_scatter", "--"), ("gather+qkv", ":")):
            for n in sorted({r["devices"] for r in rows}):
                mine = [r for r in rows if (r["cpu_mode"], r["nic"], r["devices"], r["op"]) == (cpu, nic, n, op)
                        and r["model"] == "large"]
                points = sorted({r["mbit"] for r in mine})
                ratios = []
                for mbit in points:
                    by = {r["algorithm"]: r["median_s"] for r in mine if r["mbit"] == mbit}
                    ratios.append(by["ring"] / by["direct"] if "ring" in by and "direct" in by else float("nan"))
                if points:
                    ax.plot(points, ratios, style, marker="o", label=f"{op}, {n} devices")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("link (Mbit/s)")
        ax.set_ylabel("ring time / direct time (BERT-large)")
        ax.set_title(f"CPU by {cpu}, network card {nic}")
        ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start(args.out)
    rows = []
    for cpu_mode in args.cpu_mode.split(","):
        for nic in args.nic.split(","):
            for devices in (int(d) for d in args.devices.split(",")):
                if cpu_mode == "weight" and devices > 2:
                    log.info("cpu mode weight needs a CPU per device: skipping %d devices", devices)
                    continue
                for mbit in (float(b) for b in args.bandwidths.split(",")):
                    per_rank = measure(cpu_mode, nic == "shared", devices, mbit, args)
                    rows += summarise(per_rank, cpu_mode, nic == "shared", devices, mbit, args.seq_len)
                    log.info("%s, nic %s, %d devices, %g Mbit/s: done", cpu_mode, nic, devices, mbit)
                    save_rows(args.out, rows)
    plot(rows, args.out / "results.png")
    return finish(args.out, rows, table(rows, args.repeat))


def _parse(argv):
    p = parser("benchmarks.collectives", __doc__)
    p.add_argument("--devices", default="2,3,4", help="device counts (shares: two-uneven, four-uneven's first n)")
    p.add_argument("--bandwidths", default="100,500,1000", help="Mbit/s, every link")
    p.add_argument("--models", default="base,large", help="BERT sizes (hidden 768 / 1024)")
    p.add_argument("--cpu-mode", default="quota,weight", help="emulator CPU modes (weight: 2 devices only here)")
    p.add_argument("--nic", default="per-pair,shared", help="per-pair rates, or one shared network card per device")
    p.add_argument("--repeat", type=int, default=7, help="rounds of every case (after a warmup round)")
    p.add_argument("--calls", type=int, default=4, help="calls of a single collective per case and round")
    p.add_argument("--layers", type=int, default=6, help="HMP layers back to back per case and round")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--timeout", type=float, default=60.0, help="per network wait, seconds")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "collectives")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
