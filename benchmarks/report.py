"""Benchmark results -> a Markdown table and a PNG plot, side by side per model and cluster."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path


def _ideal_s(rows: list[dict], row: dict) -> float | None:
    """T = FLOPs / sum of device rates, with FLOPs calibrated by the measured local run:
    local time x fastest rate / sum of rates."""
    for other in rows:
        if (other["model"], other["cluster"], other["mbit"], other["variant"]) == \
                (row["model"], row["cluster"], row["mbit"], "local") and "median_s" in other:
            return other["median_s"] * row["fastest_gflops"] / row["sum_gflops"]
    return None


def _local_s(rows: list[dict], row: dict) -> float | None:
    ideal = _ideal_s(rows, row)
    return ideal * row["sum_gflops"] / row["fastest_gflops"] if ideal else None


def table(rows: list[dict], repeat: int) -> str:
    lines = [f"Latency of one forward pass, median of {repeat} runs after 1 warmup (min-max); "
             "speedup over the fastest device alone; ideal = FLOPs / sum of device rates, "
             "calibrated by the measured local run.", "",
             "| model | cluster | link | variant | devices | median s (min-max) | speedup | of ideal "
             "| predicted s | pred. error | max abs error |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['cluster']} | {r['mbit']:g} Mbit/s | {r['variant']} "
        if "median_s" not in r:
            lines.append(head + f"| - | {r.get('error', 'failed')} | | | | | |")
            continue
        local, ideal = _local_s(rows, r), _ideal_s(rows, r)
        speedup = f"{local / r['median_s']:.2f}x" if local else "-"
        of_ideal = f"{100 * ideal / r['median_s']:.0f}%" if ideal else "-"
        pred_err = 100 * (r["predicted_s"] - r["median_s"]) / r["median_s"]
        err = f"{r['max_abs_error']:.1e}" if r["max_abs_error"] is not None else "-"
        stages = "+".join(str(n) for n in r["stages"])
        lines.append(head + f"| {stages} | {r['median_s']:.3f} ({r['min_s']:.3f}-{r['max_s']:.3f}) "
                     f"| {speedup} | {of_ideal} | {r['predicted_s']:.3f} | {pred_err:+.0f}% | {err} |")
    ideal_rows = {(r["model"], r["cluster"], r["mbit"]): _ideal_s(rows, r) for r in rows}
    lines += ["", "| model | cluster | link | ideal s |", "|---|---|---|---|"]
    lines += [f"| {m} | {c} | {b:g} Mbit/s | {v:.3f} |" for (m, c, b), v in ideal_rows.items() if v]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["cluster"])].append(r)
    fig, axes = plt.subplots(1, len(groups), figsize=(6.5 * len(groups), 4.5), squeeze=False)
    for ax, ((model, cluster), items) in zip(axes[0], sorted(groups.items())):
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
        ax.set_title(f"{model} on {cluster}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(rows: list[dict], out: Path, repeat: int) -> None:
    (out / "results.md").write_text(table(rows, repeat))
    plot(rows, out / "results.png")
