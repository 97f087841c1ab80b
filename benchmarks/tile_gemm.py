"""What cutting a GEMM into token tiles costs on this CPU, side by side in one run.

    python -m benchmarks.tile_gemm [--models base,large] [--rows 256,128] [--tiles 1,2,4,8]
                                   [--threads 1,2] [--repeat 15]

For BERT's four projections (QKV, attention out, MLP in, MLP down) with every head and column
(`full`) and with half of them (`half`, a two-device split), it times F.linear on `rows` tokens
whole and as `t` GEMMs of rows / t tokens each (uneven when t does not divide rows, as the
runtime's tiles are), every configuration once per round, round-robin, at each torch thread
count. The factor for t tiles is time(t tiles) / time(whole), median over rounds: what the cost
model should multiply a tiled GEMM's time by. Writes results.{json,md,png} to --out.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks.output import finish, parser, pyplot, save_figure, start
from galaxy.runtime.splits import offsets, split_sizes

REPO = Path(__file__).resolve().parents[1]
SHAPES = {"base": (768, 3072), "large": (1024, 4096)}  # hidden, intermediate


def projections(model: str, width: str) -> dict[str, tuple[int, int]]:
    """name -> (in features, out features) of BERT-`model`'s projections; `half` keeps half the
    heads and columns (what one of two devices holds)."""
    hidden, intermediate = SHAPES[model]
    part = 2 if width == "half" else 1
    return {"qkv": (hidden, 3 * hidden // part), "attn_out": (hidden // part, hidden),
            "mlp_in": (hidden, intermediate // part), "mlp_down": (intermediate // part, hidden)}


def tiled_linear(x: torch.Tensor, weight: torch.Tensor, tiles: int) -> None:
    """F.linear over `tiles` uneven row tiles of x [1, rows, in], as the runtime cuts them."""
    lengths = split_sizes(x.shape[1], [1] * tiles)
    for start, length in zip(offsets(lengths), lengths):
        F.linear(x[:, start:start + length], weight)


def measure(args) -> list[dict]:
    cases = []
    for model in args.models.split(","):
        for width in ("full", "half"):
            for name, (k, n) in projections(model, width).items():
                for rows in (int(r) for r in args.rows.split(",")):
                    x, w = torch.randn(1, rows, k), torch.randn(n, k)
                    for tiles in (int(t) for t in args.tiles.split(",")):
                        cases.append(({"model": model, "width": width, "gemm": name, "rows": rows,
                                       "tiles": tiles, "in": k, "out": n}, x, w))
    rows = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        seconds = [[] for _ in cases]
        with torch.inference_mode():
            for round_ in range(args.repeat + 1):
                for i, (case, x, w) in enumerate(cases):
                    start = time.perf_counter()
                    tiled_linear(x, w, case["tiles"])
                    if round_:  # the first round warms caches and the allocator
                        seconds[i].append(time.perf_counter() - start)
        for (case, _, _), times in zip(cases, seconds):
            rows.append({**case, "threads": threads, "median_s": statistics.median(times), "min_s": min(times)})
    whole = {_key(r): r["median_s"] for r in rows if r["tiles"] == 1}
    for r in rows:
        r["factor"] = r["median_s"] / whole[_key(r)]
        flops = 2 * r["rows"] * r["in"] * r["out"]
        r["gflop_per_s"] = flops / r["median_s"] / 1e9
    return rows


def _key(row: dict) -> tuple:
    return row["model"], row["width"], row["gemm"], row["rows"], row["threads"]


def table(rows: list[dict], repeat: int) -> str:
    tile_counts = sorted({r["tiles"] for r in rows})
    lines = [f"Time of t token tiles / time of the whole GEMM (median of {repeat} rounds, every case round-robin "
             "in one process); whole = GFLOP/s of the untiled GEMM. `full`: every head and column, `half`: half "
             "of them.", "",
             "| model | width | GEMM | rows | threads | whole GFLOP/s | " + " | ".join(f"{t} tiles" for t in tile_counts[1:]) + " |",
             "|---|---|---|---|---|---|" + "---|" * (len(tile_counts) - 1)]
    by_key: dict[tuple, dict[int, dict]] = {}
    for r in rows:
        by_key.setdefault(_key(r), {})[r["tiles"]] = r
    for (model, width, gemm, n_rows, threads), per_tiles in by_key.items():
        factors = " | ".join(f"{per_tiles[t]['factor']:.2f}" for t in tile_counts[1:])
        lines.append(f"| bert-{model} | {width} | {gemm} | {n_rows} | {threads} | {per_tiles[1]['gflop_per_s']:.0f} | {factors} |")
    lines += ["", "Mean factor per tile count over the four projections (what the cost model should charge):", "",
              "| model | width | rows | threads | " + " | ".join(f"{t} tiles" for t in tile_counts[1:]) + " |",
              "|---|---|---|---|" + "---|" * (len(tile_counts) - 1)]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["width"], r["rows"], r["threads"]), []).append(r)
    for (model, width, n_rows, threads), items in groups.items():
        means = [statistics.mean(r["factor"] for r in items if r["tiles"] == t) for t in tile_counts[1:]]
        lines.append(f"| bert-{model} | {width} | {n_rows} | {threads} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    lines += ["", "The same as GEMM speed by rows per tile (rows / tiles), relative to a 256-row GEMM, mean over the "
              "four projections and both widths (the efficiency the cost model should apply to a GEMM of that many rows):",
              "", "| model | threads | " + " | ".join(f"{n} rows" for n in _tile_rows(rows)) + " |",
              "|---|---|" + "---|" * len(_tile_rows(rows))]
    for model, threads in sorted({(r["model"], r["threads"]) for r in rows}):
        lines.append(f"| bert-{model} | {threads} | " + " | ".join(
            f"{_efficiency(rows, model, threads, n):.2f}" for n in _tile_rows(rows)) + " |")
    return "\n".join(lines) + "\n"


def _tile_rows(rows: list[dict]) -> list[int]:
    return sorted({r["rows"] // r["tiles"] for r in rows}, reverse=True)


def _efficiency(rows: list[dict], model: str, threads: int, tile_rows: int) -> float:
    """Mean over projections of GFLOP/s with tiles of `tile_rows` rows / GFLOP/s of 256 rows whole."""
    def speed(r):  # GFLOP/s of the case as run (tiled or whole: the same FLOPs)
        return r["gflop_per_s"]
    base = {(r["width"], r["gemm"]): speed(r) for r in rows
            if (r["model"], r["threads"], r["rows"], r["tiles"]) == (model, threads, max(x["rows"] for x in rows), 1)}
    ratios = [speed(r) / base[r["width"], r["gemm"]] for r in rows
              if (r["model"], r["threads"]) == (model, threads) and r["rows"] // r["tiles"] == tile_rows]
    return statistics.mean(ratios)


def plot(rows: list[dict], path: Path) -> None:
    plt = pyplot()

    panels = sorted({(r["model"], r["threads"]) for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (model, threads) in zip(axes[0], panels):
        for width in ("full", "half"):
            for n_rows in sorted({r["rows"] for r in rows}):
                items = [r for r in rows if (r["model"], r["threads"], r["width"], r["rows"]) == (model, threads, width, n_rows)]
                tile_counts = sorted({r["tiles"] for r in items})
                means = [statistics.mean(r["factor"] for r in items if r["tiles"] == t) for t in tile_counts]
                ax.plot(tile_counts, means, marker="o", label=f"{width}, {n_rows} rows")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("token tiles")
        ax.set_ylabel("time / whole GEMM (mean of 4 projections)")
        ax.set_title(f"BERT-{model}, {threads} thread(s)")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    start(args.out)
    rows = measure(args)
    plot(rows, args.out / "results.png")
    return finish(args.out, rows, table(rows, args.repeat))


def _parse(argv):
    p = parser("benchmarks.tile_gemm", __doc__)
    p.add_argument("--models", default="base,large")
    p.add_argument("--rows", default="256,128", help="tokens in the whole GEMM")
    p.add_argument("--tiles", default="1,2,4,8")
    p.add_argument("--threads", default="1,2", help="torch threads")
    p.add_argument("--repeat", type=int, default=15, help="rounds (after one warmup round)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "tile-gemm")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
