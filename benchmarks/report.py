"""Benchmark results -> a Markdown table and a PNG plot, side by side per model and cluster."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from benchmarks.output import pyplot


def _setting(row: dict) -> tuple:
    """What a row's variants are compared within: model, cluster, link, CPU mode."""
    return row["model"], row["cluster"], row["mbit"], row.get("cpu_mode", "auto")


def _ideal_s(rows: list[dict], row: dict) -> float | None:
    """T = FLOPs / sum of device rates, with FLOPs calibrated by the measured local run of the
    same setting: local time x fastest rate / sum of rates."""
    for other in rows:
        if _setting(other) == _setting(row) and other["variant"] == "local" and "median_s" in other:
            return other["median_s"] * row["fastest_gflops"] / row["sum_gflops"]
    return None


def _local_s(rows: list[dict], row: dict) -> float | None:
    ideal = _ideal_s(rows, row)
    return ideal * row["sum_gflops"] / row["fastest_gflops"] if ideal else None


def table(rows: list[dict], repeat: int) -> str:
    lines = [f"Latency of one forward pass, median of {repeat} runs after 1 warmup (min-max); "
             "speedup over the fastest device alone; ideal = FLOPs / sum of device rates, "
             "calibrated by the measured local run.", "",
             "`cpu`: how the emulator gave each device its CPU share (weight: a CPU of its own beside a filler; "
             "quota: a CFS quota, as a device busy with other work). The reference is the hand-written HMP "
             "(it reports its median and min only, and predicts nothing).", "",
             "| model | cluster | link | cpu | variant | devices | median s (min-max) | speedup | of ideal "
             "| predicted s | pred. error | max abs error |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['cluster']} | {r['mbit']:g} Mbit/s | {r.get('cpu_mode', 'auto')} | {r['variant']} "
        if "median_s" not in r:
            lines.append(head + f"| - | {r.get('error', 'failed')} | | | | | |")
            continue
        local, ideal = _local_s(rows, r), _ideal_s(rows, r)
        speedup = f"{local / r['median_s']:.2f}x" if local else "-"
        of_ideal = f"{100 * ideal / r['median_s']:.0f}%" if ideal else "-"
        predicted, pred_err = "-", "-"
        if r.get("predicted_s") is not None:
            predicted = f"{r['predicted_s']:.3f}"
            pred_err = f"{100 * (r['predicted_s'] - r['median_s']) / r['median_s']:+.0f}%"
        err = f"{r['max_abs_error']:.1e}" if r["max_abs_error"] is not None else "-"
        spread = f"{r['min_s']:.3f}-{r['max_s']:.3f}" if r.get("max_s") is not None else f"min {r['min_s']:.3f}"
        stages = "+".join(str(n) for n in r["stages"])
        lines.append(head + f"| {stages} | {r['median_s']:.3f} ({spread}) "
                     f"| {speedup} | {of_ideal} | {predicted} | {pred_err} | {err} |")
    ideal_rows = {_setting(r): _ideal_s(rows, r) for r in rows}
    lines += ["", "| model | cluster | link | cpu | ideal s |", "|---|---|---|---|---|"]
    lines += [f"| {m} | {c} | {b:g} Mbit/s | {cpu} | {v:.3f} |" for (m, c, b, cpu), v in ideal_rows.items() if v]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["cluster"], r.get("cpu_mode", "auto"))].append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, ((model, cluster, cpu_mode), items) in zip(axes[0], sorted(groups.items())):
        bandwidths = sorted({r["mbit"] for r in items})
        variants = list(dict.fromkeys(r["variant"] for r in items))
        width = 0.8 / (len(variants) + 1)
        for i, variant in enumerate(variants):
            values = [next((r.get("median_s", 0) for r in items if r["variant"] == variant and r["mbit"] == b), 0)
                      for b in bandwidths]
            ax.bar([j + i * width for j in range(len(bandwidths))], values, width, label=variant)
        ideals = [_ideal_s(rows, next(r for r in items if r["mbit"] == b)) or 0 for b in bandwidths]
        ax.bar([j + len(variants) * width for j in range(len(bandwidths))], ideals, width, label="ideal",
               color="lightgrey", hatch="//")
        ax.set_xticks([j + 0.4 for j in range(len(bandwidths))], [f"{b:g} Mbit/s" for b in bandwidths])
        ax.set_ylabel("latency per forward (s)")
        ax.set_title(f"{model} on {cluster}, CPU by {cpu_mode}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out: Path, repeat: int) -> None:
    (out / "results.md").write_text(table(rows, repeat))
    plot(rows, out / "results.png")
