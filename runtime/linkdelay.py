"""Emulated link latency: every message leaves its link's latency after it is posted.

The emulator (host/emulate.py) shapes bandwidth with htb, but these kernels have no netem, so it
cannot delay packets. It sets GALAXY_LINK_LATENCY in each rank's environment instead, a JSON
object {peer device name: seconds} of this device's links, and p2p.isend / p2p.irecv go through
here: a send is posted to gloo `latency` seconds after the caller posted it, so it arrives
latency + bytes / bandwidth after it was sent, as on a link with that propagation delay.
Receives are posted at once. Nothing here is active without the variable.

gloo's process group expects its calls serialised, so one thread, the link thread, makes every
gloo call of this process while the delay is active: it posts sends when they are due and
receives at once, and it waits on them. The caller's thread never touches gloo: `isend`/`irecv`
return a `DelayedWork` whose `wait(timeout)` hands the wait to the link thread and blocks until
it is done. The link thread only blocks in a gloo wait when no send is pending; since the
caller is then blocked in that same wait and can post nothing new, every send is posted within
its delay and a wait never holds back a send its peer needs (no deadlock the plain transport
would not have). Any other gloo call (gloo's own all-reduce) must not run while the delay is
active: runtime.collectives routes those through p2p then.

`tests/dist/test_link_latency.py` checks it with a ping-pong: a round trip takes
2 x latency + the bytes at link speed.
"""
from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

ENV = "GALAXY_LINK_LATENCY"  # {"peer device name": seconds}, set by the emulator per device
_SAFETY_S = 5.0  # the caller waits this much longer than gloo's own timeout before giving up


def latencies_from_env() -> dict[str, float]:
    """This device's link latency to each peer device, by name (empty: no emulated latency)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        return {}
    try:
        table = json.loads(text)
        return {str(name): float(seconds) for name, seconds in table.items() if float(seconds) > 0}
    except (ValueError, AttributeError, TypeError) as exc:
        raise ValueError(f"{ENV}={text!r} is not a JSON object of peer device name -> seconds ({exc})") from exc


_latency_s: dict[str, float] | None = None  # read from the environment on first use


def _table() -> dict[str, float]:
    global _latency_s
    if _latency_s is None:
        _latency_s = latencies_from_env()
    return _latency_s


def active() -> bool:
    """True when this process emulates link latency (every gloo call then runs on the link thread)."""
    return bool(_table())


def latency_s(peer_device: str) -> float:
    return _table().get(peer_device, 0.0)


@dataclass(order=True)
class _Post:
    due: float
    order: int
    kind: str = field(compare=False)  # "send" | "recv"
    tensor: torch.Tensor = field(compare=False)
    peer: int = field(compare=False)
    tag: int = field(compare=False)
    work: object = field(default=None, compare=False)  # the gloo Work once posted
    error: BaseException | None = field(default=None, compare=False)


class DelayedWork:
    """A send or receive posted through the link thread; `wait` blocks until gloo completed it."""

    def __init__(self, post: _Post, thread: "_LinkThread"):
        self._post, self._thread = post, thread

    def wait(self, timeout: timedelta | None = None) -> bool:
        seconds = timeout.total_seconds() if timeout is not None else 3600.0
        self._thread.wait(self._post, seconds)
        return True


class _LinkThread:
    """The one thread that makes every gloo call while the delay is active."""

    def __init__(self):
        self._lock = threading.Condition()
        self._pending: list[_Post] = []  # heap by due time: posts not yet handed to gloo
        self._waits: list[tuple[_Post, float, threading.Event, list]] = []
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="galaxy-link-latency", daemon=True)
        self._thread.start()

    def post(self, kind: str, tensor: torch.Tensor, peer: int, tag: int, delay_s: float) -> _Post:
        post = _Post(time.monotonic() + delay_s, next(self._order), kind, tensor, peer, tag)
        with self._lock:
            heapq.heappush(self._pending, post)
            self._lock.notify()
        return post

    def wait(self, post: _Post, timeout_s: float) -> None:
        done, outcome = threading.Event(), []
        with self._lock:
            self._waits.append((post, timeout_s, done, outcome))
            self._lock.notify()
        if not done.wait(timeout_s + _SAFETY_S):
            raise RuntimeError(f"emulated link: the wait on a {post.kind} with rank {post.peer} did not end "
                               f"within {timeout_s:g} s")
        if outcome:
            raise outcome[0]

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._waits:
                    self._lock.wait()
                due, now = [], time.monotonic()
                while self._pending and self._pending[0].due <= now:
                    due.append(heapq.heappop(self._pending))
                wait = self._waits.pop(0) if self._waits and not self._pending and not due else None
                if not due and wait is None:  # a send is not due yet: sleep until it is, or until woken
                    self._lock.wait(max(0.0, self._pending[0].due - time.monotonic()))
                    continue
            for post in due:
                self._hand_to_gloo(post)
            if wait is not None:
                self._finish(*wait)

    @staticmethod
    def _hand_to_gloo(post: _Post) -> None:
        try:
            if post.kind == "send":
                post.work = dist.isend(post.tensor, dst=post.peer, tag=post.tag)
            else:
                post.work = dist.irecv(post.tensor, src=post.peer, tag=post.tag)
        except BaseException as exc:  # raised in the caller's thread by its wait
            post.error = exc

    @staticmethod
    def _finish(post: _Post, timeout_s: float, done: threading.Event, outcome: list) -> None:
        try:
            if post.error is not None:
                raise post.error
            if post.work.wait(timeout=timedelta(seconds=timeout_s)) is False:
                raise RuntimeError(f"timed out after {timeout_s:g} s")
        except BaseException as exc:
            outcome.append(exc if isinstance(exc, RuntimeError) else RuntimeError(str(exc)))
        finally:
            done.set()


_thread: _LinkThread | None = None
_start_lock = threading.Lock()


def _link_thread() -> _LinkThread:
    global _thread
    with _start_lock:
        if _thread is None:
            _thread = _LinkThread()
            log.info("emulated link latency on (%s)", ", ".join(f"{name} {1e3 * s:g} ms"
                                                              for name, s in sorted(_table().items())))
        return _thread


def isend(tensor: torch.Tensor, peer: int, tag: int, peer_device: str) -> DelayedWork:
    """A send of `tensor` to global rank `peer`, handed to gloo after the link's latency."""
    thread = _link_thread()
    return DelayedWork(thread.post("send", tensor, peer, tag, latency_s(peer_device)), thread)


def irecv(tensor: torch.Tensor, peer: int, tag: int) -> DelayedWork:
    """A receive into `tensor` from global rank `peer`, handed to gloo at once."""
    thread = _link_thread()
    return DelayedWork(thread.post("recv", tensor, peer, tag, 0.0), thread)
