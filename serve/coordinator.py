"""The coordinator: the host-side process that owns the ranks' control connections, queues
requests, dispatches them, forms gloo groups and swaps plans between requests.

Threads (all daemons, all waits bounded):
  links       (serve/links.py) accept and check control connections, read each rank's frames
              (-> `_on_message`), send heartbeats and declare a silent rank lost (-> `_on_lost`)
  dispatcher  the only thread that changes the group: forms it (serve/forming.py: the first
              plan, a swap, a re-form after a failed request, a recovery), sends requests
              (`run`) and `end` when the queue is empty

State: `_plan` is the bundle in force and `_epoch` its group; `_wanted` a bundle the dispatcher
is to form next (with a future the caller waits on). Requests wait in `_queue`; at most
`max_in_flight` are out at once (twice the stages: a pipeline stays full and a one-stage plan
has the next request queued on every rank).

Faults (serve/recovering.py): with a Recovery (galaxy-serve's default), a lost device of the plan
in force makes the coordinator re-plan without it and switch, moving only the weights that
changed; the requests in flight go back to the front of the queue and are answered on the new
plan, and those arriving meanwhile wait. A device measured slower than planned is re-planned
around while the old plan keeps serving. Without one, a lost rank stops serving: every request
fails with 503 naming the rank, its last words and its exit status, and /healthz says why. A
request whose collective fails while every rank is alive is retried once the group is formed
again (a new epoch), at most `max_attempts` times in all; a device its peers blame
`lost_after_failures` times in a row is treated as lost. A rank's own error fails its request.
"""
from __future__ import annotations

import collections
import itertools
import logging
import socket
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import torch

from galaxy.runtime import control
from galaxy.runtime.errors import GalaxyRuntimeError

from .bundles import HostBundle, Placement
from .errors import RequestFailed, RequestTimeout, ServiceUnavailable
from .forming import FormingFailed, GroupFormer
from .links import RankLink, RankLinks
from .metrics import ServeMetrics
from .recovering import Recovering, RecoverySettings

log = logging.getLogger(__name__)

_POLL_S = 0.25
_BLAME_GRACE_S = 1.0  # after a rank reports a failed request, how long to wait for a lost link to blame

__all__ = ["Coordinator", "Pending", "RequestFailed", "RequestTimeout", "ServiceUnavailable"]


@dataclass
class Pending:
    id: int
    inputs: dict[str, torch.Tensor]
    future: Future
    submitted: float
    deadline: float
    dispatched: float | None = None
    rank0_s: float = 0.0  # rank 0's own time for this request, from taking it on to its outputs
    attempts: int = 0  # times dispatched
    on_token: Callable[[int, int], None] | None = None  # a generation's tokens as they come (index, token)


@dataclass
class _Forming:
    bundle: HostBundle
    done: Future
    reason: str  # "start", "swap", "re-form", "straggler"
    switch: object = None  # a re-planned bundle's weight moves (serve/recovery.Switch)
    record: object = None  # what the switch took (serve/record.RecoveryRecord)


class Coordinator(Recovering):
    def __init__(self, plan: HostBundle, token: bytes, listener: socket.socket, placement: Placement, *,
                 heartbeat_s: float = 1.0, dead_after_s: float = 5.0, timeout_s: float = 60.0,
                 connect_timeout_s: float = 120.0, request_timeout_s: float | None = None,
                 max_in_flight: int | None = None, metrics: ServeMetrics | None = None,
                 exit_status: Callable[[str], str | None] | None = None, recovery=None,
                 settings: RecoverySettings = RecoverySettings(), faults=None):
        self.token, self.placement = token, placement
        self.dead_after_s, self.timeout_s = dead_after_s, timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.request_timeout_s = request_timeout_s or 2 * timeout_s
        self._max_in_flight = max_in_flight
        self.metrics = metrics or ServeMetrics()
        self._exit_status = exit_status or (lambda device: None)
        self._known = {plan.sha: plan}  # bundles a connecting rank may run
        self._first = plan
        self._cond = threading.Condition()
        self._plan: HostBundle | None = None
        self._epoch = 0
        self._ready = False
        self._broken: str | None = None  # why the plan in force cannot serve
        self._wanted: _Forming | None = None
        self._queue: collections.deque[Pending] = collections.deque()
        self._in_flight: dict[int, Pending] = {}
        self._end_sent = True
        self._failures: list[dict] = []  # `failed` reports of the group in force
        self._ids = itertools.count(1)
        self._closing = threading.Event()
        self.links = RankLinks(listener, token, heartbeat_s, dead_after_s, self._cond, self._plans,
                               self._on_message, self._on_lost, self.metrics)
        self.former = GroupFormer(self.links, placement, token, self._cond, self._who, timeout_s, connect_timeout_s,
                                  dead_after_s, self._closing, self._exit_status)
        self._dispatcher = threading.Thread(target=self._dispatch, name="galaxy-dispatcher", daemon=True)
        self._init_recovering(plan, recovery, settings, faults)

    # --- public ----------------------------------------------------------------------------------

    def start(self) -> Future:
        """Start the threads and form the first plan's group; the future resolves when it serves."""
        forming = self._request_plan(self._first, "start")
        self.links.start()
        self._dispatcher.start()
        return forming

    def submit(self, inputs: dict[str, torch.Tensor], on_token: Callable[[int, int], None] | None = None) -> Future:
        """Queue one request (inputs already checked); the future gets its outputs by name. A
        generation request's `on_token(index, token)` is called, on a link's thread and under the
        coordinator's lock (so it must only hand the token on), as rank 0 makes each new token; a
        request answered again after a fault repeats its indices from 0."""
        now = time.monotonic()
        pending = Pending(next(self._ids), inputs, Future(), now, now + self.request_timeout_s, on_token=on_token)
        with self._cond:
            if self._closing.is_set():
                raise ServiceUnavailable("galaxy-serve is shutting down")
            if self._broken and self._wanted is None:
                raise ServiceUnavailable(f"the cluster cannot serve: {self._broken}")
            self._queue.append(pending)
            self.metrics.queued.set(len(self._queue))
            self._cond.notify_all()
        return pending.future

    def swap_plan(self, new_plan: HostBundle) -> Future:
        """Serve `new_plan` from the next request on (requests in flight finish on the old one).
        Every device of the new plan must be connected and hold the bundle already."""
        missing = [d for d in new_plan.devices if not self.links.alive(d)]
        if missing:
            raise ServiceUnavailable(f"{new_plan.describe()} runs on {missing}, which no live rank serves; "
                                     "start galaxy-serve with a cluster that has those devices")
        return self._request_plan(new_plan, "swap")

    @property
    def plan(self) -> HostBundle | None:
        return self._plan

    @property
    def epoch(self) -> int:
        return self._epoch

    def health(self) -> dict:
        """Every rank of the plan alive, on the plan in force, and the group serving."""
        with self._cond:
            plan = self._plan or self._first
            ranks = []
            for rank, device in enumerate(plan.devices):
                link = self.links.get(device)
                ranks.append({"rank": rank, "device": device, "alive": bool(link and link.alive),
                              "plan": link.plan_sha[:12] if link else None,
                              "last_heard_s": round(time.monotonic() - link.last_heard, 3) if link else None,
                              "lost": link.lost_reason if link else "never connected"})
            ok = (self._ready and not self._broken and all(r["alive"] for r in ranks)
                  and all(r["plan"] == plan.sha[:12] for r in ranks))
            return {"status": "ok" if ok else "unavailable", "plan": plan.sha[:12], "bundle": str(plan.path),
                    "epoch": self._epoch, "ranks": ranks, "queued": len(self._queue),
                    "in_flight": len(self._in_flight),
                    "reason": None if ok else (self._broken or ("forming the group" if not self._ready else
                                                                "a rank is not on the plan in force")),
                    **self._recovery_health()}

    def close(self) -> None:
        """Fail what waits, tell every rank to stop, close the links (never raises)."""
        with self._cond:
            if self._closing.is_set():
                return
            self._closing.set()
            self._fail_all(ServiceUnavailable("galaxy-serve is shutting down"))
            self._cond.notify_all()
        if self.recovery is not None:
            self.recovery.close()
        # A re-plan for a straggler may be slicing weights or generating modules; the interpreter
        # must not exit under it (torch's threads abort the process: "terminate called ...").
        straggler = self._straggler
        if straggler is not None and straggler is not threading.current_thread():
            straggler.join(timeout=30)
        self.links.close()
        if self._dispatcher.is_alive() and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout=5)

    def _plans(self) -> tuple[dict[str, tuple[str, ...]], str]:
        """(devices of every plan a connecting rank may run, by sha; the sha in force); under the lock."""
        return {sha: known.devices for sha, known in self._known.items()}, (self._plan or self._first).sha

    # --- what the ranks say -----------------------------------------------------------------------

    def _on_lost(self, link: RankLink, reason: str) -> None:
        recovering = False
        with self._cond:  # a recovery starts at once: the exit status below may take a second
            if self.links.get(link.device) is not link:
                return
            plan = self._plan or self._first
            if link.device in plan.devices and not self._closing.is_set() and self.recovery and not self._broken:
                self._lose(link.device, reason)
                recovering = True
        status = self._exit_status(link.device)
        full = f"{reason}{'; ' + status if status else ''}"
        with self._cond:
            log.error("galaxy-serve: lost %s: %s", self._who(link.device), full)
            self.metrics.lost_ranks.inc()
            if link.device in plan.devices and not self._closing.is_set() and not recovering:
                self._broken = f"{self._who(link.device)} lost: {full}"
                self._ready = False
                self._fail_all(ServiceUnavailable(f"the cluster cannot serve: {self._broken}"))
            self._cond.notify_all()

    def _on_message(self, link: RankLink, message: control.Message) -> None:
        header = message.header
        with self._cond:
            if self.former.note(link.device, message):
                if message.kind == control.JOINED and header.get("holds"):
                    self._holds[link.device] = (header["holds"]["plan"], int(header["holds"]["rank"]))
            elif message.kind == control.RESULT:
                pending = self._in_flight.pop(header.get("id"), None) if header.get("epoch") == self._epoch else None
                if pending is not None:
                    self._complete(pending, message.tensors)
            elif message.kind == control.TOKEN:
                pending = self._in_flight.get(header.get("id")) if header.get("epoch") == self._epoch else None
                if pending is not None and pending.on_token is not None:
                    pending.on_token(int(header["index"]), int(header["token"]))
            elif message.kind == control.TIMES:
                if self._plan is not None and header.get("epoch") == self._epoch:
                    self.metrics.record_times(link.device, header, self._plan.devices)
                    pending = self._in_flight.get(header.get("id"))
                    if pending is not None and link.device == self._plan.devices[0]:
                        pending.rank0_s = float(header.get("wall_s", 0.0))
                    self._watch_times(link.device, header)
            elif message.kind == control.FAILED:
                # a recovery already took back the requests in flight: its group's failures are its symptoms
                if header.get("epoch") == self._epoch and self._recovering is None:
                    self._failures.append({"device": link.device, **header})
            self._cond.notify_all()

    def _complete(self, pending: Pending, outputs: dict) -> None:
        now = time.monotonic()
        dispatched = pending.dispatched or now
        self.metrics.observe_request(now - pending.submitted, now - dispatched)
        pending.future.timing = {"queue": dispatched - pending.submitted, "cluster": now - dispatched,
                                 "rank0": pending.rank0_s}
        pending.future.set_result(outputs)
        self.metrics.set_in_flight(len(self._in_flight))
        self._answered(now)

    # --- the dispatcher: group formation and requests ---------------------------------------------

    def _request_plan(self, bundle: HostBundle, reason: str, switch=None, record=None) -> Future:
        done: Future = Future()
        with self._cond:
            if self._wanted is not None or self._recovering is not None:
                what = self._wanted.bundle.describe() if self._wanted else "a recovery"
                raise ServiceUnavailable(f"another plan ({what}) is being formed")
            self._known[bundle.sha] = bundle
            self._wanted = _Forming(bundle, done, reason, switch, record)
            self._cond.notify_all()
        return done

    def _dispatch(self) -> None:
        while not self._closing.is_set():
            try:
                self._dispatch_once()
            except Exception:  # a bug here must not silently stop serving
                log.exception("galaxy-serve: the dispatcher failed")
                with self._cond:
                    self._broken = "the coordinator's dispatcher failed (a bug; see its log)"
                    self._fail_all(ServiceUnavailable(f"the cluster cannot serve: {self._broken}"))
                return

    def _dispatch_once(self) -> None:
        sends: list[tuple[RankLink, str, dict, dict | None]] = []
        with self._cond:
            if not self._work_waiting():
                self._cond.wait(_POLL_S)
            self._expire_requests()
            if self._failures:
                self._handle_failures()
                return
            recovering = self._recovering is not None
            if recovering:
                forming = None
            elif self._wanted is not None and not self._in_flight:
                forming = self._wanted
            else:
                forming = None
                if self._ready and not self._broken:
                    sends = self._next_sends()
        if recovering:
            self._recover()
            return
        if forming is not None:
            self._form(forming)
            return
        for link, kind, header, tensors in sends:
            if link is None:
                self._request_started(header["id"])
                continue
            try:
                link.send(kind, header, tensors, timeout_s=self.dead_after_s)
            except control.ControlError:
                return  # lost: _on_lost takes care of the requests

    def _work_waiting(self) -> bool:
        """Something the dispatcher can do right now (under the lock); else it waits for a change."""
        if self._failures or self._recovering is not None or (self._wanted is not None and not self._in_flight):
            return True
        if not self._ready or self._broken:
            return False
        room = self._queue and len(self._in_flight) < self._cap() and self._wanted is None
        drain = self._in_flight and (not self._queue or self._wanted is not None) and not self._end_sent
        return bool(room or drain)

    def _next_sends(self) -> list:
        """Requests to dispatch now (and `end` when the queue ran dry); under the lock."""
        plan, sends = self._plan, []
        links = [self.links.get(device) for device in plan.devices]
        while self._queue and len(self._in_flight) < self._cap() and self._wanted is None:
            pending = self._queue.popleft()
            pending.dispatched = time.monotonic()
            pending.attempts += 1
            self._in_flight[pending.id] = pending
            header = {"epoch": self._epoch, "id": pending.id, **({"stream": True} if pending.on_token else {})}
            sends += [(link, control.RUN, header, pending.inputs) for link in links]
            self._end_sent = False
            if pending.attempts == 1:  # after its `run` words: fault injection's cue (serve/faults.py)
                sends.append((None, "started", {"id": pending.id}, None))
        drain = self._in_flight and (not self._queue or self._wanted is not None)
        if drain and not self._end_sent:  # a pipeline's rank 0 finishes what it started
            sends += [(link, control.END, {"epoch": self._epoch}, None) for link in links]
            self._end_sent = True
        self.metrics.queued.set(len(self._queue))
        self.metrics.set_in_flight(len(self._in_flight))
        return sends

    def _cap(self) -> int:
        return self._max_in_flight or 2 * self._plan.stages

    def _expire_requests(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self._queue if p.deadline < now]:
            self._queue.remove(pending)
            self._fail(pending, RequestTimeout(f"no answer within {self.request_timeout_s:g} s (still queued: "
                                               "the cluster is busy or forming); retry later"))
        late = [p for p in self._in_flight.values() if p.deadline < now]
        if late:
            self._failures.append({"device": None, "id": late[0].id, "error": (
                f"request {late[0].id} got no answer within {self.request_timeout_s:g} s")})

    def _handle_failures(self) -> None:
        """A request failed on some rank: blame a lost rank if one goes within the grace; else
        retry what is in flight (a collective's failure) or fail it (a rank's own error), blame
        the peer the rank names, and form the group again (under the lock)."""
        end = time.monotonic() + _BLAME_GRACE_S
        while not (self._broken or self._recovering) and time.monotonic() < end:
            self._cond.wait(end - time.monotonic())
        first = self._failures[0]
        who = self._who(first["device"]) if first["device"] else "the coordinator"
        self._failures = []
        self._ready = False
        if self._broken or self._recovering:
            return  # _on_lost took care of the requests
        cause = f"{who}: {first.get('error')}"
        log.error("galaxy-serve: a request failed (%s); forming the group again", cause)
        if self._blamed(first, cause):
            return
        if first.get("peer") is not None:
            self._requeue_in_flight(f"request failed on {cause}")
        for pending in list(self._in_flight.values()):
            self._fail(pending, RequestFailed(f"request failed on {cause}"))
        self._in_flight.clear()
        if self._wanted is None:
            self._known[self._plan.sha] = self._plan
            self._wanted = _Forming(self._plan, Future(), "re-form")

    def _form(self, forming: _Forming) -> None:
        """Form the group of `forming.bundle` (outside the lock, but only this thread forms)."""
        try:
            self._form_group(forming.bundle, forming.switch, forming.record)
        except (GalaxyRuntimeError, FormingFailed) as exc:
            log.error("galaxy-serve: %s", exc)
            with self._cond:
                self._wanted = None
                if forming.switch is not None and self._recovering is None and not self._closing.is_set():
                    self._switch_failed(str(exc))  # devices may hold old or new shards: re-plan from them
                elif self._recovering is None:  # else a device was lost: the recovery takes over
                    self._broken = str(exc)
                    self._ready = False
                    self._fail_all(ServiceUnavailable(f"the cluster cannot serve: {exc}"))
            if not forming.done.done():
                forming.done.set_exception(exc if isinstance(exc, GalaxyRuntimeError) else ServiceUnavailable(str(exc)))
            return
        with self._cond:
            self._wanted = None
        log.info("galaxy-serve: serving %s (epoch %d, %s)", forming.bundle.describe(), self._epoch, forming.reason)
        forming.done.set_result(self._epoch)

    def _form_group(self, bundle: HostBundle, switch=None, record=None) -> None:
        """A new epoch's group for `bundle` (with `switch`'s weight moves); raises FormingFailed."""
        self.former.await_links(bundle)
        with self._cond:
            self._epoch += 1
            epoch = self._epoch
            self._ready, self._broken, self._plan = False, None, bundle
            self._failures = []  # the old group's: nothing of it runs any more
        joined = self.former.form(bundle, epoch, switch, self._transfer_started if switch is not None else None)
        with self._cond:
            self._ready = True
            self._end_sent = True
            self.metrics.set_plan(bundle, epoch)
            self._formed(bundle, joined, record)
            self._cond.notify_all()

    # --- helpers (under the lock) ------------------------------------------------------------------

    def _who(self, device: str, bundle: HostBundle | None = None) -> str:
        plan = bundle or self._plan or self._first
        return f"rank {plan.devices.index(device)} ({device})" if device in plan.devices else device

    def _fail(self, pending: Pending, error: Exception) -> None:
        if not pending.future.done():
            pending.future.set_exception(error)
        self.metrics.errors.labels(kind=type(error).__name__).inc()

    def _fail_all(self, error: Exception) -> None:
        for pending in list(self._in_flight.values()) + list(self._queue):
            self._fail(pending, error)
        self._in_flight.clear()
        self._queue.clear()
        self.metrics.queued.set(0)
        self.metrics.set_in_flight(0)
