"""`galaxy-plan show --png`: a per-rank timeline of the prologue, one layer of each stage, and
the epilogue, as the cost model predicts them.

Every block starts when the previous one ends (`block_s`: slowest rank + link - hidden). Within a
block each rank computes for its own time (the hatched tail is CPU spent moving bytes); the
collective's link time is drawn below the compute bar: the part tiled overlap hides is shaded
under the end of the compute, the exposed part follows it. For the gather before the epilogue
and the hand-off between stages the transfer comes first. The picture is built from plain
`Segment`s (`timeline_segments`), so it is testable without matplotlib, an optional dependency
(the `bench` extra) imported only when drawing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from galaxy.compiler.cost.latency import block_s
from galaxy.compiler.ir.plan import BlockTime, Plan
from galaxy.compiler.report.show import runs_per_forward

LINK_FIRST = ("epilogue", "transfer")  # blocks whose transfer precedes their compute
COLOURS = {"prologue": "#9e9e9e", "attention": "#4c72b0", "connective": "#55a868", "mlp": "#dd8452",
           "epilogue": "#8172b2", "transfer": "#937860"}
LINK_COLOUR = "#c44e52"


@dataclass(frozen=True)
class Segment:
    rank: int
    start_s: float
    duration_s: float
    block: str  # attention | connective | mlp | prologue | epilogue | transfer
    part: str  # compute | comm_cpu | link | hidden


@dataclass(frozen=True)
class Span:
    """One block on the time axis (all ranks), with how often it runs per forward."""

    start_s: float
    end_s: float
    block: str
    stage: int
    runs: int


def timeline_segments(plan: Plan) -> tuple[list[Segment], list[Span]]:
    segments, spans, t = [], [], 0.0
    for b in plan.predicted_blocks:
        segments += _block_segments(plan, b, t)
        spans.append(Span(t, t + block_s(b), b.block, b.stage, runs_per_forward(plan, b)))
        t += block_s(b)
    return [s for s in segments if s.duration_s > 0], spans


def _block_segments(plan: Plan, b: BlockTime, t0: float) -> list[Segment]:
    ranks = plan.stages[b.stage].ranks
    cpu = b.comm_cpu_s_per_rank or (0.0,) * len(ranks)
    slowest = max(b.compute_s_per_rank, default=0.0)
    exposed = b.comm_s - b.hidden_s
    start = t0 + b.comm_s if b.block in LINK_FIRST else t0
    link_at = t0 if b.block in LINK_FIRST else t0 + slowest
    out = []
    for rank, compute, moving in zip(ranks, b.compute_s_per_rank, cpu):
        if b.block == "epilogue" and compute == 0:
            continue
        out.append(Segment(rank, start, compute - moving, b.block, "compute"))
        out.append(Segment(rank, start + compute - moving, moving, b.block, "comm_cpu"))
        out.append(Segment(rank, link_at - b.hidden_s, b.hidden_s, b.block, "hidden"))
        out.append(Segment(rank, link_at, exposed, b.block, "link"))
    return out


def write_timeline_png(plan: Plan, path: str | Path) -> Path:
    """Draw the timeline of `plan` into a PNG file; needs matplotlib (pip install galaxy-edge[bench]).

    Three panels share the rank axis, each with its own time scale, so a layer stays readable
    next to a long epilogue: prologue | one layer of each stage | epilogue (empty ones left out).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    segments, spans = timeline_segments(plan)
    panels = [p for p in _panels(spans) if p[2] > p[1]]
    n = plan.world_size
    fig, axes = plt.subplots(1, len(panels), sharey=True, squeeze=False, figsize=(12, 2.2 + 0.6 * n),
                             gridspec_kw={"width_ratios": [3.5 if name == "layers" else 1 for name, *_ in panels]})
    for ax, (name, lo, hi) in zip(axes[0], panels):
        for s in segments:  # each panel counts from its own start
            if lo <= s.start_s + s.duration_s and s.start_s <= hi:
                _draw(ax, s, lo)
        _label_spans(ax, [sp for sp in spans if lo <= sp.start_s < hi or sp.start_s == lo], lo, hi - lo)
        ax.set_xlim(0, (hi - lo) * 1e3)
        if name != "layers":
            ax.xaxis.set_major_locator(MaxNLocator(nbins=3))
        ax.set_xlabel("one layer of each stage (ms)" if name == "layers" else f"{name} (ms)", fontsize=9)
        ax.grid(axis="x", color="#eeeeee")
        ax.set_axisbelow(True)
        ax.tick_params(axis="x", labelsize=8)
    first = axes[0][0]
    first.set_yticks(range(n), [f"rank {r}\n{d}" for r, d in enumerate(plan.devices)])
    first.set_ylim(n - 0.4, -1.1)
    schedules = " || ".join(str(s.schedule) for s in plan.stages)
    fig.suptitle(f"{plan.model} on {plan.cluster} ({plan.solver}, {schedules}): "
                 f"predicted {plan.predicted_latency_s * 1e3:.1f} ms per forward", fontsize=11)
    fig.legend(handles=_legend(spans, segments), loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1 + 0.1 / n, 1, 1))
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _panels(spans: list[Span]) -> list[tuple[str, float, float]]:
    """(name, start, end) of the prologue, the layers (and stage hand-offs) and the epilogue."""
    ends = [sp for sp in spans if sp.block in ("prologue", "epilogue")]
    middle = [sp for sp in spans if sp not in ends]
    out = [(sp.block, sp.start_s, sp.end_s) for sp in ends if sp.block == "prologue"]
    if middle:
        out.append(("layers", middle[0].start_s, middle[-1].end_s))
    return out + [(sp.block, sp.start_s, sp.end_s) for sp in ends if sp.block == "epilogue"]


def _draw(ax, s: Segment, offset_s: float) -> None:
    colour = LINK_COLOUR if s.part in ("link", "hidden") else COLOURS.get(s.block, "#cccccc")
    top, height = (s.rank - 0.38, 0.46) if s.part in ("compute", "comm_cpu") else (s.rank + 0.12, 0.26)
    ax.broken_barh([((s.start_s - offset_s) * 1e3, s.duration_s * 1e3)], (top, height), facecolors=colour,
                   alpha=0.35 if s.part == "hidden" else 1.0, hatch={"comm_cpu": "///", "hidden": "xx"}.get(s.part),
                   edgecolor="white" if s.part == "comm_cpu" else colour, linewidth=0.5)


def _legend(spans: list[Span], segments: list[Segment]) -> list:
    from matplotlib.patches import Patch
    blocks = [blk for blk in COLOURS if any(sp.block == blk and sp.end_s > sp.start_s for sp in spans)]
    parts = {s.part for s in segments}
    extra = {"comm_cpu": Patch(facecolor="#dddddd", hatch="///", edgecolor="white", label="CPU moving bytes"),
             "link": Patch(facecolor=LINK_COLOUR, label="link time (exposed)"),
             "hidden": Patch(facecolor=LINK_COLOUR, alpha=0.35, hatch="xx", edgecolor=LINK_COLOUR,
                             label="link time hidden by overlap")}
    return [*(Patch(facecolor=COLOURS[blk], label=blk) for blk in blocks),
            *(patch for part, patch in extra.items() if part in parts)]


def _label_spans(ax, spans: list[Span], offset_s: float, width_s: float) -> None:
    """Block names above the bars (where there is room) and block borders."""
    short = {"attention": "att", "connective": "con", "prologue": "pro", "epilogue": "epi", "transfer": "xfer"}
    for sp in spans:
        width = sp.end_s - sp.start_s
        if width <= 0:
            continue
        ax.axvline((sp.end_s - offset_s) * 1e3, color="#bbbbbb", linestyle=":", linewidth=0.8)
        if width / width_s > 0.04:
            name = sp.block if width / width_s > 0.15 else short.get(sp.block, sp.block)
            runs = f" x{sp.runs}" if sp.runs > 1 else ""
            centre_ms = (sp.start_s - offset_s + width / 2) * 1e3
            ax.text(centre_ms, -0.7, f"{name}{runs}", ha="center", va="center", fontsize=8)
