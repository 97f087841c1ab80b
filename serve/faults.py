"""Fault injection: kill, slow or cut off a device at a chosen request, to try a cluster before
trusting it (galaxy-serve and galaxy-run, --inject, repeatable).

    kill:RANK@REQ            the rank's process is killed (SIGKILL) once request REQ is sent to it
    slow:RANK:FACTOR@REQ     its CPU share divided by FACTOR as request REQ starts (and after)
    linkdown:RANK@REQ        its link taken down once request REQ is sent to it
    KIND:...@recovery        instead of at a request: as the next recovery sends its join words
                             (a second fault, during the transfer of the first recovery)

RANK is a rank of the bundle first served, or its device's name; REQ counts requests from 1 in
the order they are first dispatched (a retried request does not start again). On emulated devices
(--emulate) `slow` changes the device's cgroup (host/emulate.py: its quota, or its weight beside
a filler) and `linkdown` takes its switch port down. On local processes (--local) `slow` stops
and continues the process in a duty cycle (SIGSTOP/SIGCONT every 20 ms, as cpulimit does) and
`linkdown` stops it for good: nothing comes from it any more and its connections stay open, which
is what a cut link looks like to its peers.
"""
from __future__ import annotations

import logging
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Protocol, Sequence

from galaxy.runtime.errors import UsageError

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^(?P<kind>kill|slow|linkdown):(?P<target>[^:@]+)(?::(?P<factor>[0-9]+(?:\.[0-9]+)?))?@"
                   r"(?P<at>[0-9]+|recovery)$")
_DUTY_PERIOD_S = 0.02


@dataclass(frozen=True)
class Fault:
    kind: str
    target: str  # a rank number or a device name
    factor: float | None = None  # slow only
    at: int | None = None  # request number from 1; None: during the next recovery
    spec: str = ""

    @classmethod
    def parse(cls, text: str) -> "Fault":
        found = _SPEC.match(text.strip())
        if not found or (found["kind"] == "slow") != (found["factor"] is not None):
            raise UsageError(f"--inject {text!r} is not kill:RANK@REQ, slow:RANK:FACTOR@REQ or linkdown:RANK@REQ "
                             "(REQ a request number from 1, or 'recovery')")
        factor = float(found["factor"]) if found["factor"] else None
        if factor is not None and factor <= 1.0:
            raise UsageError(f"--inject {text!r}: FACTOR divides the CPU share, so it must be > 1")
        at = None if found["at"] == "recovery" else int(found["at"])
        if at == 0:
            raise UsageError(f"--inject {text!r}: requests count from 1")
        return cls(found["kind"], found["target"], factor, at, text.strip())

    def device(self, devices: Sequence[str]) -> str:
        """The device it hits, among the first plan's `devices` (by rank or by name)."""
        if self.target.isdigit():
            if int(self.target) >= len(devices):
                raise UsageError(f"--inject {self.spec}: the bundle has ranks 0-{len(devices) - 1}")
            return devices[int(self.target)]
        if self.target not in devices:
            raise UsageError(f"--inject {self.spec}: no device {self.target!r} in the plan ({', '.join(devices)})")
        return self.target


class FaultActions(Protocol):
    def kill(self, device: str) -> None: ...
    def slow(self, device: str, factor: float) -> None: ...
    def link_down(self, device: str) -> None: ...
    def close(self) -> None: ...


class FaultInjector:
    """Fires each fault at its cue (the coordinator calls `request_started` and `transfer_started`)
    and remembers when, so a recovery can report its detection time."""

    def __init__(self, faults: Sequence[Fault], actions: FaultActions, devices: Sequence[str]):
        self.actions = actions
        self._pending = [(fault, fault.device(devices)) for fault in faults]
        self.fired: list[dict] = []  # {"fault", "device", "at_s" (monotonic)}
        self._lock = threading.Lock()

    def request_started(self, request_id: int) -> None:
        self._fire(lambda fault: fault.at == request_id, f"request {request_id}")

    def transfer_started(self) -> None:
        self._fire(lambda fault: fault.at is None, "the recovery's transfer")

    def fault_time(self, device: str, kinds: Sequence[str] = ("kill", "linkdown")) -> float | None:
        """When the last fault of `kinds` that hit `device` fired."""
        times = [f["at_s"] for f in self.fired if f["device"] == device and f["fault"].kind in kinds]
        return times[-1] if times else None

    def _fire(self, due, cue: str) -> None:
        with self._lock:
            now = [(f, d) for f, d in self._pending if due(f)]
            self._pending = [(f, d) for f, d in self._pending if not due(f)]
        for fault, device in now:
            log.warning("galaxy: injecting %s into %s at %s", fault.spec, device, cue)
            at = time.monotonic()
            if fault.kind == "kill":
                self.actions.kill(device)
            elif fault.kind == "slow":
                self.actions.slow(device, fault.factor)
            else:
                self.actions.link_down(device)
            self.fired.append({"fault": fault, "device": device, "at_s": at})


class SignalFaults:
    """Faults on local rank processes, by signals."""

    def __init__(self, procs):
        self.procs = procs  # device -> subprocess.Popen
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def kill(self, device: str) -> None:
        self._signal(device, signal.SIGKILL)

    def link_down(self, device: str) -> None:
        self._signal(device, signal.SIGSTOP)

    def slow(self, device: str, factor: float) -> None:
        thread = threading.Thread(target=self._duty_cycle, args=(device, factor), daemon=True,
                                  name=f"galaxy-slow-{device}")
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop the duty cycles and continue every stopped process (so it can be stopped properly)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=1)
        for device in self.procs:
            self._signal(device, signal.SIGCONT)

    def _duty_cycle(self, device: str, factor: float) -> None:
        running = _DUTY_PERIOD_S / factor
        while not self._stop.is_set():
            if not self._signal(device, signal.SIGCONT):
                return
            time.sleep(running)
            if self._stop.is_set() or not self._signal(device, signal.SIGSTOP):
                return
            time.sleep(_DUTY_PERIOD_S - running)
        self._signal(device, signal.SIGCONT)

    def _signal(self, device: str, sig: int) -> bool:
        proc = self.procs.get(device)
        if proc is None or proc.poll() is not None:
            return False
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return False
        return True


class EmulatorFaults(SignalFaults):
    """Faults on emulated devices: `slow` through the device's cgroup, `linkdown` at its switch port."""

    def __init__(self, procs, emulator, devices: Sequence[str]):
        super().__init__(procs)
        self.emulator, self.rank_of = emulator, {d: r for r, d in enumerate(devices)}

    def slow(self, device: str, factor: float) -> None:
        rank = self.rank_of[device]
        self.emulator.set_cpu_share(rank, self.emulator.cpu_shares[rank] / factor)

    def link_down(self, device: str) -> None:
        self.emulator.link_down(self.rank_of[device])


def parse_faults(specs: Sequence[str] | None) -> list[Fault]:
    return [Fault.parse(spec) for spec in specs or ()]
