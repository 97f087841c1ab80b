"""What the coordinator does when a device is lost or straggles (a part of Coordinator).

Lost (its control connection closed, no heartbeat for --dead-after, or its peers' collectives
blamed it `lost_after_failures` times in a row):
  1. under the lock (`_lose`): the device joins `_lost`, serving stops, the requests in flight go
     back to the front of the queue (each at most `max_attempts` times in all), a
     RecoveryRecord starts; new requests keep queueing.
  2. on the dispatcher (`_recover`): `abort` to the survivors (a wait on a device whose link is
     down would otherwise last until its timeout), the switch for the devices left from the
     Recovery (prepared ahead for a single loss), then the new group with the weight moves. A
     device lost meanwhile (a second fault) sends it back to 2 with one device fewer; devices
     that cannot hold the model end it with the planner's shortfall in every answer.
  3. the first request answered on the new plan closes the record; it is logged as one line.

Straggling (serve/watch.py): a Verdict starts a thread that asks the Recovery for a plan at the
measured rates while the old plan serves on; if it is predicted at least `min_gain` faster than
the running plan at those rates, the dispatcher swaps to it between requests, moving weights the
same way; else the verdict is logged and the plan kept.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from galaxy.compiler.errors import GalaxyError
from galaxy.runtime import control
from galaxy.runtime.errors import GalaxyRuntimeError

from .bundles import HostBundle
from .errors import RequestFailed, ServiceUnavailable
from .forming import FormingFailed, GroupLost
from .record import RecoveryRecord, now
from .watch import Verdict, Watch, WatchSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverySettings:
    watch: WatchSettings = field(default_factory=WatchSettings)
    lost_after_failures: int = 2  # a device its peers' collectives blame this many times in a row is lost
    max_attempts: int = 3  # a request is dispatched at most this many times (the first and its retries)


class Recovering:
    """Mixed into Coordinator; uses its lock, queue, links, former and dispatcher."""

    def _init_recovering(self, plan: HostBundle, recovery, settings: RecoverySettings, faults) -> None:
        self.recovery, self.settings, self.faults = recovery, settings, faults
        self.watch = Watch(settings.watch)
        self._serving: HostBundle | None = None  # the last plan whose group formed
        self._holds = {device: (plan.sha, rank) for rank, device in enumerate(plan.devices)}
        self._lost: set[str] = set()
        self._blame: dict[str, int] = {}
        self._recovering: RecoveryRecord | None = None  # a loss the dispatcher is to recover from
        self._straggler: threading.Thread | None = None  # joined on close: it runs torch code
        self._awaiting_answer: RecoveryRecord | None = None
        self._kept: list[dict[str, float]] = []  # straggler verdicts the running plan was kept for
        self.records: list[RecoveryRecord] = []

    # --- under the coordinator's lock -------------------------------------------------------------

    def _lose(self, device: str, why: str) -> None:
        """A device of the plan in force is lost: stop serving, keep the requests, recover."""
        self._lost.add(device)
        self._ready = False
        self._requeue_in_flight(f"{self._who(device)} was lost")
        fault_at = self.faults.fault_time(device) if self.faults else None
        why = why.split(" (")[0]  # the gist: the details are in the log line above
        if self._recovering is None:
            self._recovering = RecoveryRecord("lost", f"lost {device} ({why})", now(), fault_at)
        else:
            self._recovering.notes.append(f"also lost {device} during the recovery ({why})")
        if self._wanted is not None:  # a swap planned for the devices as they were
            self._wanted.done.set_exception(ServiceUnavailable(f"plan change cancelled: {device} was lost"))
            self._wanted = None
        self._cond.notify_all()

    def _switch_failed(self, why: str) -> None:
        """A switch with every device alive failed (a rank could not rebuild): recover from what
        the devices hold now, as after a loss, but without losing one."""
        self._ready = False
        self._requeue_in_flight("the switch failed")
        self._recovering = RecoveryRecord("rebuild", f"a failed switch ({why.split(': ', 1)[-1][:200]})", now())
        self._cond.notify_all()

    def _requeue_in_flight(self, reason: str) -> None:
        """The requests in flight go back to the front of the queue, in order, to be answered by
        the next group; one dispatched `max_attempts` times already fails instead."""
        for pending in sorted(self._in_flight.values(), key=lambda p: p.id, reverse=True):
            if pending.attempts >= self.settings.max_attempts:
                self._fail(pending, RequestFailed(f"request {pending.id} failed {pending.attempts} times; last: "
                                                  f"{reason}"))
            else:
                log.warning("galaxy-serve: request %d will be answered again (%s)", pending.id, reason)
                self._queue.appendleft(pending)
        self._in_flight.clear()
        self._end_sent = True
        self.metrics.queued.set(len(self._queue))
        self.metrics.set_in_flight(0)

    def _blamed(self, failure: dict, cause: str) -> bool:
        """Count a collective failure against the peer it names; True if that makes it lost."""
        peer = failure.get("peer")
        if peer is None or self.recovery is None or not 0 <= int(peer) < len(self._plan.devices):
            return False
        device = self._plan.devices[int(peer)]
        self._blame[device] = self._blame.get(device, 0) + 1
        if self._blame[device] < self.settings.lost_after_failures:
            return False
        log.error("galaxy-serve: %s blamed by its peers %d times in a row: treating it as lost",
                  self._who(device), self._blame[device])
        self._lose(device, f"its peers' collectives failed on it {self._blame[device]} times in a row: {cause}")
        return True

    def _watch_times(self, device: str, header: dict) -> None:
        verdict = self.watch.observe(device, header.get("id"), header)
        if verdict is None:
            return
        if any(_similar(verdict.slowdown, kept, self.settings.watch.margin) for kept in self._kept):
            log.debug("galaxy-serve: watch: %s (the plan was kept for about these factors)", verdict.detail)
            return
        if self._closing.is_set():
            return
        straggling = self._straggler is not None and self._straggler.is_alive()  # its switch is being prepared
        busy = straggling or self._recovering is not None or self._wanted is not None
        log.warning("galaxy-serve: watch: %s%s", verdict.detail, "" if self.recovery and not busy else
                    " (not re-planning: " + ("no model copy" if not self.recovery else "a plan change is under way") + ")")
        if self.recovery is not None and not busy:
            self._straggler = threading.Thread(target=self._replan_for, args=(verdict, now()),
                                               name="galaxy-straggler", daemon=True)
            self._straggler.start()

    def _answered(self, at: float) -> None:
        self._blame.clear()
        record, self._awaiting_answer = self._awaiting_answer, None
        if record is not None:
            record.answered_at = at
            log.warning("galaxy-serve: %s", record.describe())
            self.metrics.record_recovery(record)

    def _formed(self, bundle: HostBundle, joined: dict, record: RecoveryRecord | None) -> None:
        self._serving = bundle
        self.watch.reset(bundle.plan, self._first.plan)
        self._kept = []
        if self.recovery is not None:
            self.recovery.know(bundle)
        if record is not None:
            record.joined_at = now()
            record.ranks = {d: h["moved"] for d, h in joined.items() if h.get("moved")}
            self.records.append(record)
            self._awaiting_answer = record
            if self.recovery is not None and record.switch is not None:
                self.recovery.commit(record.switch, dict(self._holds))

    def _recovery_health(self) -> dict:
        return {"lost": sorted(self._lost), "recovering": self._recovering.cause if self._recovering else None,
                "recovery": self.recovery.status() if self.recovery else {"ready": False, "why_not": "off"},
                "recoveries": [r.to_json() for r in self.records[-5:]]}

    # --- on the dispatcher thread ----------------------------------------------------------------------

    def _request_started(self, request_id: int) -> None:
        if self.faults is not None:
            self.faults.request_started(request_id)

    def _transfer_started(self) -> None:
        with self._cond:
            record = self._recovering or (self._wanted.record if self._wanted else None)
            if record is not None:
                record.transfer_at = now()
        if self.faults is not None:
            self.faults.transfer_started()

    def _recover(self) -> None:
        """Re-plan without the lost devices and switch, until it serves or cannot."""
        record = self._recovering
        while not self._closing.is_set():
            with self._cond:
                serving = self._serving or self._first
                devices = [d for d in serving.devices if d not in self._lost and self.links.alive(d)]
                holds, epoch = dict(self._holds), self._epoch
            self._abort(epoch, devices)
            if not devices:
                return self._give_up(record, f"every device of {serving.describe()} is lost")
            try:
                switch = self.recovery.switch(serving, devices, holds, reason=record.cause)
            except (GalaxyError, GalaxyRuntimeError) as exc:
                return self._give_up(record, " ".join(str(exc).split()))
            with self._cond:
                gone = [d for d in switch.bundle.devices if d in self._lost or not self.links.alive(d)]
            if gone:
                continue  # a second fault while planning: plan again without it
            record.planned_at, record.plan = now(), f"{switch.bundle.sha[:12]} on {', '.join(switch.bundle.devices)}"
            record.prepared_ahead, record.prepare_s = switch.prepared_ahead, dict(switch.seconds)
            record.planned_bytes, record.switch = switch.moves.total, switch
            try:
                self._form_group(switch.bundle, switch, record)
            except GroupLost as exc:
                with self._cond:
                    if exc.device not in self._lost:
                        self._lose(exc.device, str(exc))
                continue
            except (FormingFailed, GalaxyRuntimeError) as exc:
                return self._give_up(record, f"the new plan could not form its group: {exc}")
            with self._cond:
                self._recovering = None
                self._cond.notify_all()
            return None
        return None

    def _abort(self, epoch: int, devices: list[str]) -> None:
        """Tell the survivors to shut the connections of the broken group (every epoch up to `epoch`)."""
        for device in devices:
            link = self.links.get(device)
            try:
                link.send(control.ABORT, {"epoch": epoch}, timeout_s=self.dead_after_s)
            except (control.ControlError, AttributeError):
                pass  # lost as well: the next round of _recover leaves it out

    def _give_up(self, record: RecoveryRecord, why: str) -> None:
        log.error("galaxy-serve: cannot recover from %s: %s", record.cause, why)
        with self._cond:
            self._recovering = None
            self._broken = f"cannot recover from {record.cause}: {why}"
            self._ready = False
            self._fail_all(ServiceUnavailable(f"the cluster cannot serve: {self._broken}"))
            self._cond.notify_all()

    # --- a straggler's thread ---------------------------------------------------------------------------

    def _replan_for(self, verdict: Verdict, detected_at: float) -> None:
        slowed = [self.faults.fault_time(d, ("slow",)) for d in verdict.slowdown] if self.faults else []
        record = RecoveryRecord("straggler", f"straggler {verdict.factors}", detected_at,
                                max((t for t in slowed if t is not None), default=None))
        try:
            with self._cond:
                serving = self._serving
                devices = [d for d in serving.devices if d not in self._lost and self.links.alive(d)]
                holds = dict(self._holds)
            switch = self.recovery.switch(serving, devices, holds, slowdown=verdict.slowdown, reason=record.cause)
            record.planned_at, record.plan = now(), f"{switch.bundle.sha[:12]} on {', '.join(switch.bundle.devices)}"
            record.prepare_s, record.planned_bytes, record.switch = dict(switch.seconds), switch.moves.total, switch
            gain = self.settings.watch.min_gain
            if switch.current_predicted_s is not None and switch.predicted_s > (1 - gain) * switch.current_predicted_s:
                with self._cond:
                    self._kept.append(dict(verdict.slowdown))
                log.warning("galaxy-serve: keeping %s: at the measured rates it is predicted %.1f ms, the re-plan "
                            "%.1f ms (less than %.0f%% better)", serving.describe(), 1e3 * switch.current_predicted_s,
                            1e3 * switch.predicted_s, 100 * gain)
                return
            log.warning("galaxy-serve: switching for %s: predicted %.1f ms instead of %.1f ms at the measured rates",
                        record.cause, 1e3 * switch.predicted_s, 1e3 * (switch.current_predicted_s or 0))
            self._request_plan(switch.bundle, "straggler", switch, record)
        except (GalaxyError, GalaxyRuntimeError) as exc:
            log.error("galaxy-serve: could not re-plan for %s: %s", record.cause, exc)


def _similar(slowdown: dict[str, float], kept: dict[str, float], margin: float) -> bool:
    """The same devices off by about the same factors as a verdict the plan was kept for."""
    return set(slowdown) == set(kept) and all(
        max(f, kept[d]) / min(f, kept[d]) < 1 + margin / 2 for d, f in slowdown.items())
