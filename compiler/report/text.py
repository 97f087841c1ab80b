"""Text helpers for plan reports: aligned tables and time/byte formats."""
from __future__ import annotations

from typing import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ",
          left: int = 2) -> list[str]:
    """Rows of cells as aligned lines: the first `left` columns left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return (indent + "  ".join(parts)).rstrip()

    return [line(header), *(line(r) for r in rows)]


def ms_decimals(latency_s: float) -> int:
    """Decimals for times in ms in a report of a plan predicting `latency_s`."""
    return 3 if latency_s < 0.1 else 2 if latency_s < 10 else 1


def ms(seconds: float, decimals: int = 3) -> str:
    return f"{seconds * 1e3:.{decimals}f}"


def signed_ms(seconds: float, decimals: int = 3) -> str:
    return f"{seconds * 1e3:+.{decimals}f}"


def pct(new: float, old: float) -> str:
    """Relative change, "+12.3%"; "n/a" when the old value is zero."""
    return f"{(new - old) / old * 100:+.1f}%" if old else "n/a"


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if abs(n) >= 2**30 else f"{n / 2**20:.1f} MiB"
