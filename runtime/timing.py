"""Where a rank's time goes: wall time spent inside each collective, per forward.

Off unless GALAXY_PROFILE=1 (then entry.py logs one line per run on every rank). The fused
overlap functions include the GEMMs they hide transfers behind; the time spent blocked in
waits for peers (p2p.Transfer.wait) is counted apart, as `waiting on peers`: it is the
communication a plan failed to hide, whatever the collective.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Callable

ENABLED = os.environ.get("GALAXY_PROFILE") == "1"
_totals: dict[str, list[float]] = {}  # collective -> [seconds, calls]
WAITING = "(waiting on peers)"  # inside the collectives, so not added to them


def record_wait(seconds: float) -> None:
    """A wait on a peer that blocked this long (called by p2p.Transfer.wait when ENABLED)."""
    _add(WAITING, seconds)


def _add(name: str, seconds: float) -> None:
    entry = _totals.setdefault(name, [0.0, 0])
    entry[0] += seconds
    entry[1] += 1


def accumulating(fn: Callable, record: Callable[[float], None]) -> Callable:
    """`fn` wrapped so that the wall time of each call goes to `record(seconds)`."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            record(time.perf_counter() - start)
    return wrapper


def timed(name: str):
    def decorate(fn):
        if not ENABLED:
            return fn
        return accumulating(fn, lambda seconds: _add(name, seconds))
    return decorate


def take() -> dict[str, tuple[float, int]]:
    """The totals since the last call, and reset them."""
    out = {k: (v[0], int(v[1])) for k, v in sorted(_totals.items())}
    _totals.clear()
    return out


def describe(totals: dict[str, tuple[float, int]], run_s: float) -> str:
    collectives = {name: value for name, value in totals.items() if name != WAITING}
    inside = sum(s for s, _ in collectives.values())
    parts = ", ".join(f"{name} {calls}x {1e3 * s:.1f} ms" for name, (s, calls) in collectives.items())
    text = f"{1e3 * run_s:.1f} ms, of which {1e3 * inside:.1f} ms in collectives ({parts})"
    if WAITING in totals:
        seconds, waits = totals[WAITING]
        text += f"; {1e3 * seconds:.1f} ms of it waiting on peers ({waits} waits)"
    return text
