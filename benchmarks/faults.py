"""Surviving faults on three emulated devices: a device killed, a device slowed 4x, a link cut.

    python -m benchmarks.faults [--requests 16] [--out benchmarks/results/faults] [--report-only]   (root)

The model is a BERT from an HF config (6 layers, hidden 512, 128 tokens, random weights: 80 MB),
split by the proportional HMP planner over three equal devices (CPU share 0.6 each, 48 GFLOP/s,
1 Gbit/s links). Every case is `galaxy-run BUNDLE --emulate --requests N --inject ...` run in this
process (serve/trial.py): requests one after another, each answer compared with the bundle's
reference (atol = rtol = 1e-4), the switches for each single device lost prepared before the first.

1. kill: the process of one device is killed when request 6 starts, with the switches prepared
   ahead (galaxy-serve's default) and prepared on the fault (--prepare on-fault). Recovery by
   phase (detect, re-plan, transfer, first answer), the bytes moved against a full reload, and the
   time the bytes moved take at link speed (the target: recovery under 2 s plus that; the
   emulator does not shape the coordinator's own sends, so those arrive faster than that).
2. slow: one device's CPU share divided by 4 when request 6 starts. Latency per request before,
   during and after, against a fresh plan made for the new speeds (planned for the slowed device
   and run on the same slowed emulator); how many requests after the fault the latency settles
   within 20% of the fresh plan's (median of three requests in a row).
3. linkdown: one device's switch port taken down when request 4 starts, for heartbeat intervals of
   0.25, 0.5 and 1 s with --dead-after twice the interval: detection time against both.
"""
from __future__ import annotations

import json
import logging
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks.output import finish, parser, pyplot, save_figure, save_rows, start
from benchmarks.run import REPO
from galaxy.compiler.ir.cluster import Cluster, Device, Link
from galaxy.compiler.pipeline import capture_model, write_plan_bundle
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.replan import cluster_now
from galaxy.serve.session import ServeOptions
from galaxy.serve.trial import run_trial

log = logging.getLogger("benchmarks.faults")
CONFIG = {"model_type": "bert", "hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
          "intermediate_size": 2048, "vocab_size": 1000, "max_position_embeddings": 128}
SEQ_LEN = 128
LINK_BYTES_PER_S = 125e6  # 1 Gbit/s
CLUSTER = Cluster("three-equal", tuple(Device(name, 8 * 2**30, 48e9, cpu_share=0.6, overlap_efficiency=0.5)
                                       for name in ("a", "b", "c")), Link(LINK_BYTES_PER_S, 2e-3))
FAULT_AT = 6  # the request a kill or a slowdown fires at
SLOWED, FACTOR = "c", 4.0
HEARTBEATS_S = (0.25, 0.5, 1.0)
SETTLED_WITHIN = 0.2  # "settled": within 20% of the fresh plan's latency


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start(args.out)
    if args.report_only:
        rows = json.loads((args.out / "results.json").read_text())
        plot(rows, args.out / "results.png")
        return finish(args.out, rows, table(rows))
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-faults-") as scratch:
        source = Path(scratch) / "model" / "config.json"
        source.parent.mkdir()
        source.write_text(json.dumps(CONFIG))
        bundle = _bundle(Path(scratch) / "three", source, CLUSTER)
        for prepare in ("ahead", "on-fault"):
            rows.append(_case("kill", f"prepared {prepare}", bundle, args.requests, f"kill:1@{FAULT_AT}",
                              prepare_ahead=prepare == "ahead"))
            save_rows(args.out, rows)
        fresh = _bundle(Path(scratch) / "fresh", source, cluster_now(CLUSTER, CLUSTER.names, {SLOWED: FACTOR}))
        rows.append(_case("fresh", f"planned for {SLOWED} x{FACTOR:g}", fresh, max(8, args.requests // 2),
                          recovery=False))
        rows.append(_case("slow", f"{SLOWED} x{FACTOR:g}", bundle, args.requests + 14,
                          f"slow:{CLUSTER.names.index(SLOWED)}:{FACTOR:g}@{FAULT_AT}"))
        save_rows(args.out, rows)
        for heartbeat in HEARTBEATS_S:
            rows.append(_case("linkdown", f"heartbeat {heartbeat:g} s", bundle, 8, "linkdown:2@4",
                              heartbeat_s=heartbeat, dead_after_s=2 * heartbeat))
            save_rows(args.out, rows)
    plot(rows, args.out / "results.png")
    code = finish(args.out, rows, table(rows))
    return code if all(r["all_matched"] for r in rows) else 3


def _bundle(folder: Path, source: Path, cluster: Cluster) -> Path:
    captured, graph, summary = capture_model(str(source), None, SEQ_LEN)
    plan = make_plan(summary, cluster, solver="proportional")
    return write_plan_bundle(folder, plan, summary, graph, captured, str(source), cluster, None,
                             {"size": None, "seq_len": SEQ_LEN, "capture": "export"})


def _case(kind: str, variant: str, bundle: Path, requests: int, *inject: str, heartbeat_s: float = 0.5,
          dead_after_s: float = 2.0, prepare_ahead: bool = True, recovery: bool = True) -> dict:
    log.info("%s (%s): %d requests, %s", kind, variant, requests, ", ".join(inject) or "no fault")
    options = ServeOptions(mode="emulate", heartbeat_s=heartbeat_s, dead_after_s=dead_after_s, timeout_s=30.0,
                           prepare_ahead=prepare_ahead, recovery=recovery, inject=inject)
    result = run_trial(bundle, options, requests)
    log.info("%s (%s):\n%s", kind, variant, result.describe())
    return {"kind": kind, "variant": variant, "inject": list(inject), "heartbeat_s": heartbeat_s,
            "dead_after_s": dead_after_s, "all_matched": result.all_matched and len(result.requests) == requests,
            "requests": [asdict(r) | {"devices": list(r.devices)} for r in result.requests],
            "recoveries": [{k: v for k, v in record.items() if k != "ranks"} for record in result.recoveries],
            "faults": result.faults}


# --- figures ------------------------------------------------------------------------------------

def _latencies(row: dict) -> list[float]:
    return [r["latency_s"] for r in row["requests"] if r["latency_s"] is not None]


def _switched_at(row: dict) -> int | None:
    """The number of the last request answered by a plan different from its predecessor's."""
    plans = [r["plan"] for r in row["requests"]]
    changes = [i + 1 for i in range(1, len(plans)) if plans[i] != plans[i - 1]]
    return changes[-1] if changes else None


def slow_summary(rows: list[dict]) -> dict | None:
    """Before / during / after latencies of the slowdown, against the fresh plan's."""
    slow = next((r for r in rows if r["kind"] == "slow"), None)
    fresh = next((r for r in rows if r["kind"] == "fresh"), None)
    if slow is None or fresh is None:
        return None
    latencies = [r["latency_s"] for r in slow["requests"]]
    switched = _switched_at(slow) or len(latencies) + 1
    fresh_s = statistics.median(_latencies(fresh)[1:])  # the first request warms up
    bound = (1 + SETTLED_WITHIN) * fresh_s
    settled = next((n for n in range(FAULT_AT, len(latencies) - 1)
                    if statistics.median(latencies[n - 1:n + 2]) <= bound), None)
    return {"before_s": statistics.median(latencies[1:FAULT_AT - 1]),
            "during_s": statistics.median(latencies[FAULT_AT - 1:switched - 1]) if switched > FAULT_AT else None,
            "after_s": statistics.median(latencies[switched:]) if switched < len(latencies) else None,
            "fresh_s": fresh_s, "switched_at": switched, "settled_at": settled,
            "settled_after": None if settled is None else settled - FAULT_AT}


def table(rows: list[dict]) -> str:
    out = ["# Surviving faults on three emulated devices", "",
           f"BERT (6 layers, hidden 512, {SEQ_LEN} tokens, 80 MB of weights), proportional HMP over three "
           "devices at CPU share 0.6 (48 GFLOP/s) and 1 Gbit/s, `python -m benchmarks.faults` "
           "(serve/trial.py: what `galaxy-run --emulate --requests N --inject ...` runs). Every answer is "
           "compared with the reference (atol = rtol = 1e-4).", "",
           "## Recoveries by phase", "",
           "| fault | case | detect | re-plan | transfer | first answer | total | moved between devices | "
           "from the coordinator | kept | full reload | moved bytes at link speed | answers correct |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        correct = f"{sum(bool(r['matched']) for r in row['requests'])}/{len(row['requests'])}"
        for record in row["recoveries"] or ([None] if row["kind"] != "fresh" else []):
            if record is None:
                out.append(f"| {' '.join(row['inject'])} | {row['variant']} | no recovery | | | | | | | | | | {correct} |")
                continue
            phases, moved = record["phases_s"], record["bytes"]
            out.append(f"| {' '.join(row['inject'])} | {row['variant']}: {record['cause'][:40]} | "
                       + " | ".join(_ms(phases[p]) for p in ("detect", "re-plan", "transfer", "first answer", "total"))
                       + f" | {_mib(moved['peer'])} | {_mib(moved['host'])} | {_mib(moved['kept'])} | "
                         f"{_mib(moved['full_reload'])} | {_ms((moved['peer'] + moved['host']) / LINK_BYTES_PER_S)} | {correct} |")
    summary = slow_summary(rows)
    if summary:
        out += ["", f"## A device slowed {FACTOR:g}x at request {FAULT_AT}", "",
                "| before | during (old plan) | after the switch | fresh plan for the new speeds | after / fresh | "
                "last switch at request | settled within 20% of fresh after |",
                "|---|---|---|---|---|---|---|",
                f"| {_ms(summary['before_s'])} | {_ms(summary['during_s'])} | {_ms(summary['after_s'])} | "
                f"{_ms(summary['fresh_s'])} | "
                f"{summary['after_s'] / summary['fresh_s']:.2f}x | {summary['switched_at']} | "
                f"{'-' if summary['settled_after'] is None else str(summary['settled_after']) + ' requests'} |"
                if summary["after_s"] else "| no switch | | | | | | |"]
    links = [r for r in rows if r["kind"] == "linkdown"]
    if links:
        out += ["", "## Link down: detection against the heartbeat", "",
                "| heartbeat | dead after | detected after the fault | recovery total | answers correct |",
                "|---|---|---|---|---|"]
        for row in links:
            record = row["recoveries"][0] if row["recoveries"] else None
            out.append(f"| {_ms(row['heartbeat_s'])} | {_ms(row['dead_after_s'])} | "
                       f"{_ms(record['phases_s']['detect']) if record else '-'} | "
                       f"{_ms(record['phases_s']['total']) if record else '-'} | "
                       f"{sum(bool(r['matched']) for r in row['requests'])}/{len(row['requests'])} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    fig, (kill, slow, link) = plt.subplots(1, 3, figsize=(16, 4.5))
    records = [(f"{row['variant']}", rec) for row in rows if row["kind"] == "kill" for rec in row["recoveries"]]
    left = [0.0] * len(records)
    for phase in ("detect", "re-plan", "transfer", "first answer"):
        widths = [1e3 * (rec["phases_s"][phase] or 0.0) for _, rec in records]
        kill.barh([name for name, _ in records], widths, left=left, label=phase)
        left = [a + b for a, b in zip(left, widths)]
    kill.set_xlabel("ms after the kill")
    kill.set_title("kill 1 of 3 devices: recovery by phase")
    kill.legend(fontsize=8)

    summary = slow_summary(rows)
    for row in rows:
        if row["kind"] in ("slow", "kill"):
            numbers = [r["number"] for r in row["requests"] if r["latency_s"] is not None]
            slow.plot(numbers, [1e3 * s for s in _latencies(row)], marker=".",
                      label=f"{row['kind']} ({row['variant']})")
    if summary:
        slow.axhline(1e3 * summary["fresh_s"], color="gray", linestyle="--", label="fresh plan for the new speeds")
        slow.axhline(1e3 * summary["fresh_s"] * (1 + SETTLED_WITHIN), color="gray", linestyle=":", label="+20%")
    slow.axvline(FAULT_AT, color="red", linewidth=0.8)
    slow.set_xlabel("request")
    slow.set_ylabel("latency (ms)")
    slow.set_title(f"latency per request (fault at request {FAULT_AT})")
    slow.legend(fontsize=7)

    links = [r for r in rows if r["kind"] == "linkdown" and r["recoveries"]]
    beats = [r["heartbeat_s"] for r in links]
    link.plot(beats, [r["recoveries"][0]["phases_s"]["detect"] for r in links], marker="o", label="detected")
    link.plot(beats, [r["dead_after_s"] for r in links], linestyle="--", label="--dead-after")
    link.plot(beats, [r["dead_after_s"] + r["heartbeat_s"] for r in links], linestyle=":",
              label="--dead-after + heartbeat")
    link.set_xlabel("heartbeat interval (s)")
    link.set_ylabel("seconds from link down to detection")
    link.set_title("link down")
    link.legend(fontsize=8)
    save_figure(fig, path)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.0f} ms"


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


def _parse(argv):
    p = parser("benchmarks.faults", __doc__)
    p.add_argument("--requests", type=int, default=16, help="requests per kill case (the slowdown runs 14 more)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "faults")
    p.add_argument("--report-only", action="store_true", help="the table and plot again from results.json")
    return p.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(main())
