"""What the benchmark scripts do around their measurements: logging, the output folder, results."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def start(out: Path) -> None:
    """Log progress to stderr (the library's own INFO lines off) and make the output folder."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("galaxy").setLevel(logging.WARNING)
    out.mkdir(parents=True, exist_ok=True)


def save_rows(out: Path, rows: list[dict]) -> None:
    """results.json: every measured row (rewritten after each, so a stopped run keeps its rows)."""
    (out / "results.json").write_text(json.dumps(rows, indent=1))


def finish(out: Path, rows: list[dict], markdown: str) -> int:
    """results.json and results.md, the table printed; the exit code."""
    save_rows(out, rows)
    (out / "results.md").write_text(markdown)
    print(markdown)
    return 0


def parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line of `python -m <module>`, its module docstring as the description."""
    return argparse.ArgumentParser(prog=f"python -m {module}", description=doc,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def pyplot():
    """matplotlib.pyplot drawing to files (the Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure as a PNG and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
