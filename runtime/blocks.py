"""Per-block wall time of a generated rank module, for the coordinator's per-device metrics.

A generated module calls its block functions (`attention`, `mlp`, ...) through module globals,
so wrapping those globals times every call without touching the generated code. Names map to
the block kinds of plan.json's `predicted_blocks` (the two connective functions are one kind);
a module without some of these names simply reports fewer blocks. Collectives run inside the
blocks, so a block's time is its compute plus the communication it waits for, which is what the
plan predicts per block too. The clock also keeps, per block kind, the part of that time spent
waiting for transfers (runtime/p2p.py): block time minus waits is what the device itself was
busy with, the figure galaxy-serve compares with the plan's predicted compute to find a slow
device (a slow peer makes everyone's blocks longer, but only its own busy time).
"""
from __future__ import annotations

import functools
import time
from types import ModuleType

from . import p2p

BLOCK_OF_FUNCTION = {"prologue": "prologue", "attention": "attention", "after_attention": "connective",
                     "mlp": "mlp", "after_mlp": "connective", "epilogue": "epilogue"}


class BlockClock:
    """Seconds spent in each block kind, and waiting for transfers inside it, since the last `take()`."""

    def __init__(self):
        self._totals: dict[str, float] = {}
        self._waits: dict[str, float] = {}

    def instrument(self, module: ModuleType) -> None:
        """Replace the module's block functions by timed wrappers (once per module)."""
        for name, block in BLOCK_OF_FUNCTION.items():
            fn = getattr(module, name, None)
            if callable(fn) and not getattr(fn, "_galaxy_timed", False):
                setattr(module, name, self._timed(fn, block))

    def take(self) -> tuple[dict[str, float], dict[str, float]]:
        """({block: seconds}, {block: seconds waiting for transfers}), and start again."""
        totals, waits, self._totals, self._waits = self._totals, self._waits, {}, {}
        return totals, waits

    def _timed(self, fn, block: str):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            start, waited = time.perf_counter(), p2p.waited_s()
            try:
                return fn(*args, **kwargs)
            finally:
                self._totals[block] = self._totals.get(block, 0.0) + time.perf_counter() - start
                self._waits[block] = self._waits.get(block, 0.0) + p2p.waited_s() - waited
        wrapper._galaxy_timed = True
        return wrapper
