"""What one recovery took, phase by phase, and what it moved.

    detect        fault (when an injected one fired) -> the coordinator's decision
    re-plan       decision -> the switch ready: aborting the broken group, re-planning, lowering and
                  generating the new modules, matching the weights (near zero when prepared ahead)
    transfer      join words sent -> every rank joined: the coordinator's pieces, loading the new
                  modules, the new group, the exchange between devices, rebuilding and checking
    first answer  joined -> the first request answered on the new plan (a retried one, if any)
    total         fault (or decision) -> first answer

A straggler's `detect` is the requests it took to be sure; its `re-plan` runs while the old plan
keeps serving, so only `transfer` stops the service.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from .reshard import MovedBytes

PHASES = ("detect", "re-plan", "transfer", "first answer", "total")


@dataclass
class RecoveryRecord:
    kind: str  # "lost" | "straggler"
    cause: str
    detected_at: float
    fault_at: float | None = None
    planned_at: float | None = None
    transfer_at: float | None = None
    joined_at: float | None = None
    answered_at: float | None = None
    plan: str = ""  # the new plan's sha (12) and devices
    prepared_ahead: bool = False
    prepare_s: dict = field(default_factory=dict)  # plan, generate, moves (when prepared now)
    planned_bytes: MovedBytes = field(default_factory=MovedBytes)
    ranks: dict = field(default_factory=dict)  # device -> what its rebuild took (runtime/reshard.py)
    notes: list[str] = field(default_factory=list)  # second faults, retries
    switch: object = None  # the serve/recovery.Switch it made

    def phases(self) -> dict[str, float | None]:
        def span(a, b):
            return None if a is None or b is None else max(0.0, b - a)
        return {"detect": span(self.fault_at, self.detected_at), "re-plan": span(self.detected_at, self.planned_at),
                "transfer": span(self.transfer_at, self.joined_at), "first answer": span(self.joined_at, self.answered_at),
                "total": span(self.fault_at if self.fault_at is not None else self.detected_at, self.answered_at)}

    def measured_bytes(self) -> MovedBytes:
        """What the ranks report they kept, received from peers and from the coordinator."""
        return sum((MovedBytes(int(m.get("kept", 0)), int(m.get("peer", 0)), int(m.get("host", 0)))
                    for m in self.ranks.values()), MovedBytes()) + MovedBytes(full=self.planned_bytes.full)

    def to_json(self) -> dict:
        moved = self.measured_bytes()
        return {"kind": self.kind, "cause": self.cause, "plan": self.plan, "prepared_ahead": self.prepared_ahead,
                "phases_s": self.phases(), "prepare_s": self.prepare_s, "notes": self.notes,
                "bytes": {"kept": moved.kept, "peer": moved.peer, "host": moved.host, "full_reload": moved.full},
                "ranks": self.ranks}

    def describe(self) -> str:
        phases = ", ".join(f"{name} {_ms(value)}" for name, value in self.phases().items())
        ahead = "prepared ahead" if self.prepared_ahead else (
            "prepared now: " + ", ".join(f"{k} {v:.2f} s" for k, v in self.prepare_s.items()))
        notes = f"; {'; '.join(self.notes)}" if self.notes else ""
        return (f"recovered from {self.cause} onto {self.plan} ({ahead}): {phases}; "
                f"{self.measured_bytes().describe()}{notes}")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.0f} ms"


def now() -> float:
    return time.monotonic()
