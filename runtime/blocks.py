"""Per-block wall time of a generated rank module, for the coordinator's per-device metrics.

A generated module calls its block functions (`attention`, `mlp`, ...) through module globals,
so wrapping those globals times every call without touching the generated code. Names map to
the block kinds of plan.json's `predicted_blocks` (the two connective functions are one kind);
a module without some of these names simply reports fewer blocks. Collectives run inside the
blocks, so a block's time is its compute plus the communication it waits for, which is what the
plan predicts per block too.
"""
from __future__ import annotations

from types import ModuleType

from .timing import accumulating

BLOCK_OF_FUNCTION = {"prologue": "prologue", "attention": "attention", "after_attention": "connective",
                     "mlp": "mlp", "after_mlp": "connective", "epilogue": "epilogue"}


class BlockClock:
    """Seconds spent in each block kind since the last `take()`."""

    def __init__(self):
        self._totals: dict[str, float] = {}

    def instrument(self, module: ModuleType) -> None:
        """Replace the module's block functions by timed wrappers (once per module)."""
        for name, block in BLOCK_OF_FUNCTION.items():
            fn = getattr(module, name, None)
            if callable(fn) and not getattr(fn, "_galaxy_timed", False):
                setattr(module, name, self._timed(fn, block))

    def take(self) -> dict[str, float]:
        totals, self._totals = self._totals, {}
        return totals

    def _timed(self, fn, block: str):
        def record(seconds: float) -> None:
            self._totals[block] = self._totals.get(block, 0.0) + seconds
        wrapper = accumulating(fn, record)
        wrapper._galaxy_timed = True
        return wrapper
