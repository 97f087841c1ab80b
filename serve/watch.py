"""Watching each device's speed against the plan's predictions: who straggles, and by how much.

Every rank reports, with each answer, the seconds it spent in each block kind and, of them, the
seconds it waited for transfers (runtime/blocks.py). Blocks minus waits is the time the device
itself was busy; the plan predicts it too (plan.json's `predicted_blocks`: each rank's compute
per block, per layer of its stage). For each device:

    ratio[d]    = smoothed measured busy / predicted busy   (moving average of the last `smoothing` requests)
    slowdown[d] = ratio[d] / reference                       reference: the median ratio of the devices
                                                            (the faster one of two)

Dividing by the reference takes out what is common to every device: the cost model's absolute
error and a machine that is busier as a whole, neither of which a new split would fix. A device
whose slowdown stays above 1 + margin (or below 1 / (1 + margin): it got faster again; this only
for a device the plan assumes slowed, or one also faster than its own prediction) for
`requests` requests in a row is reported, with its factor measured over those requests alone
(the moving average still remembers the requests before the change): the re-plan divides its
rates by it (planner/replan.py). Waits are not busy time, so a slow device makes its peers' blocks longer
(they wait for it at every collective) but not their busy time. Devices whose predicted busy
time is under `min_predicted_s` are not judged: timer and Python overheads dominate there.
"""
from __future__ import annotations

import collections
import logging
import statistics
from dataclasses import dataclass

from galaxy.runtime.blocks import BLOCK_OF_FUNCTION

log = logging.getLogger(__name__)

BLOCKS = frozenset(BLOCK_OF_FUNCTION.values())


@dataclass(frozen=True)
class WatchSettings:
    margin: float = 0.5  # a device this much slower than the others, relative to the plan, straggles
    requests: int = 3  # ... for this many requests in a row
    smoothing: int = 3  # moving average over this many requests
    min_gain: float = 0.1  # switch only to a plan predicted this much faster than the running one
    min_predicted_s: float = 2e-3  # devices predicted busier than this per request are judged


@dataclass(frozen=True)
class Verdict:
    """Devices measured off the plan for `requests` requests in a row: device -> factor (> 1 slower)."""

    slowdown: dict[str, float]
    detail: str  # the numbers, for the log

    @property
    def factors(self) -> str:
        """e.g. "c x2.61": who is off, by how much."""
        return ", ".join(f"{d} x{f:.2f}" for d, f in sorted(self.slowdown.items()))


def predicted_busy_s(document: dict) -> dict[str, float]:
    """Each device's predicted compute per request (seconds), from plan.json's predicted_blocks."""
    plan = document["plan"]
    devices, stages = plan["devices"], plan["stages"]
    busy = collections.Counter()
    for block in plan.get("predicted_blocks", ()):
        if block["block"] not in BLOCKS:
            continue
        stage = stages[block["stage"]]
        runs = stage["end_layer"] - stage["first_layer"] if block.get("per_layer", True) else 1
        for rank, seconds in zip(stage["ranks"], block["compute_s_per_rank"]):
            busy[devices[rank]] += seconds * runs
    return dict(busy)


def assumed_slower(document: dict, first: dict) -> set[str]:
    """Devices whose GEMM rate in `document`'s cluster is below the one in `first`'s: a re-plan
    divided their rates by a measured slowdown (planner/replan.py)."""
    def rates(doc: dict) -> dict[str, float]:
        return {d["name"]: float(d["flops_per_s"]) for d in (doc.get("cluster") or {}).get("devices", ())}
    now, before = rates(document), rates(first)
    return {d for d, rate in now.items() if d in before and rate < 0.99 * before[d]}


def measured_busy_s(times: dict) -> float:
    """A rank's busy seconds for one request, from its `times` report."""
    walls, waits = times.get("blocks") or {}, times.get("block_waits") or {}
    return sum(max(0.0, float(s) - float(waits.get(b, 0.0))) for b, s in walls.items() if b in BLOCKS)


class Watch:
    """Smoothed measured/predicted ratios per device of the plan in force; not thread-safe (the
    coordinator calls it under its lock)."""

    def __init__(self, settings: WatchSettings = WatchSettings()):
        self.settings = settings
        self.predicted: dict[str, float] = {}
        self.assumed_slower: set[str] = set()
        self._samples: dict[str, collections.deque] = {}
        self._streak: collections.Counter = collections.Counter()
        self._last_request: dict[str, int] = {}

    def reset(self, document: dict, first: dict | None = None) -> None:
        """A new plan is in force: judge against its predictions, from scratch. `first`: plan.json
        of the plan serving began with, to tell which devices this one assumes slower than that."""
        self.predicted = predicted_busy_s(document)
        self.assumed_slower = assumed_slower(document, first) if first is not None else set()
        window = max(self.settings.smoothing, self.settings.requests)
        self._samples = {d: collections.deque(maxlen=window) for d in self.predicted}
        self._streak.clear()
        self._last_request.clear()

    def ratios(self, last: int | None = None) -> dict[str, float]:
        """Measured / predicted busy time of each judged device, averaged over its last `last`
        requests (default: the smoothing window), once it has that many."""
        last = last or self.settings.smoothing
        return {d: statistics.fmean(list(s)[-last:]) / self.predicted[d] for d, s in self._samples.items()
                if len(s) >= last and self.predicted[d] >= self.settings.min_predicted_s}

    def observe(self, device: str, request_id: int, times: dict) -> Verdict | None:
        """Take one rank's report; a Verdict once some device has been off for long enough."""
        if device not in self._samples:
            return None
        self._samples[device].append(measured_busy_s(times))
        self._last_request[device] = request_id
        if any(self._last_request.get(d) != request_id for d in self._samples):
            return None  # judge once per request, when every device has reported it
        ratios = self.ratios()
        if len(ratios) < 2:
            return None
        bound = 1.0 + self.settings.margin
        reference = _reference(ratios)
        for d, ratio in ratios.items():
            factor = ratio / reference
            # Faster than the reference counts for a device re-planned as slower (it may have recovered),
            # or one faster than its own prediction as well: when two of three devices are disturbed, the
            # median is a disturbed one and the undisturbed third looks faster than it.
            faster = factor < 1 / bound and (d in self.assumed_slower or ratio < 1 / bound)
            off = factor > bound or faster
            self._streak[d] = self._streak[d] + 1 if off else 0
        if log.isEnabledFor(logging.DEBUG):
            log.debug("watch: request %s: %s", request_id, ", ".join(
                f"{d} x{r:.2f} (x{r / reference:.2f}, streak {self._streak[d]})" for d, r in sorted(ratios.items())))
        if max(self._streak.values(), default=0) < self.settings.requests:
            return None
        recent = self.ratios(self.settings.requests)  # the requests of the streak, without those before
        reference = _reference(recent)
        off = {d: recent[d] / reference for d in recent if self._streak[d] >= self.settings.requests}
        detail = "; ".join(
            f"{d}: busy {1e3 * recent[d] * self.predicted[d]:.1f} ms vs {1e3 * self.predicted[d]:.1f} ms "
            f"predicted (x{recent[d]:.2f}, x{recent[d] / reference:.2f} of the reference x{reference:.2f})"
            for d in sorted(recent))
        self._streak.clear()
        return Verdict(off, f"{', '.join(f'{d} x{f:.2f}' for d, f in sorted(off.items()))} for "
                            f"{self.settings.requests} requests (margin {self.settings.margin:g}): {detail}")


def _reference(ratios: dict[str, float]) -> float:
    """What every device shares: the median ratio (of two, the faster: slowing down is likelier)."""
    values = sorted(ratios.values())
    return values[0] if len(values) == 2 else statistics.median(values)
