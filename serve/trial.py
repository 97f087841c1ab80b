"""`galaxy-run BUNDLE (--local | --emulate) --requests N --inject SPEC ...`: try a cluster's faults.

The ranks run as galaxy-serve's persistent ranks (serve/session.py), so a lost or straggling
device is re-planned around exactly as when serving; the requests go one after another (each
waits for the answer before the next is sent), so every request's latency and the plan that
answered it are its own. Before the first request the trial waits until the switches for each
single device lost are prepared, as a server that has been up a while would be.

It prints a line per request (latency, the plan in force, whether the outputs match the bundle's
reference), one per recovery (its phases and the bytes moved) and a verdict; `--output OUT`
gets the last request's outputs by name, as a run without faults writes them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from galaxy.runtime import bundle as layout
from galaxy.runtime.errors import GalaxyRuntimeError

from .bundles import HostBundle
from .compare import output_errors
from .session import ServeOptions, serving

log = logging.getLogger(__name__)

_READY_TIMEOUT_S = 900.0


@dataclass
class TrialRequest:
    number: int
    latency_s: float | None
    plan: str  # sha (12) of the plan that answered
    devices: tuple[str, ...]
    matched: bool | None  # None: no reference for these inputs
    max_abs_error: float | None = None
    error: str | None = None


@dataclass
class TrialResult:
    requests: list[TrialRequest]
    recoveries: list[dict]  # RecoveryRecord.to_json()
    faults: list[str]  # what was injected, when
    last_outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    tolerance: tuple[float, float] = (1e-4, 1e-4)

    @property
    def all_matched(self) -> bool:
        return all(r.matched is not False and r.error is None for r in self.requests)

    def describe(self) -> str:
        rows = [f"{'request':>7}  {'latency':>10}  {'plan':<12}  {'devices':<28}  output"]
        for r in self.requests:
            latency = f"{1e3 * r.latency_s:8.1f} ms" if r.latency_s is not None else "         -"
            verdict = (f"FAILED: {r.error}" if r.error else "matches the reference" if r.matched
                       else "no reference" if r.matched is None else f"DIFFERS (max abs error {r.max_abs_error:.3g})")
            rows.append(f"{r.number:>7}  {latency}  {r.plan:<12}  {', '.join(r.devices):<28}  {verdict}")
        rows += [f"injected: {fault}" for fault in self.faults]
        for i, record in enumerate(self.recoveries, 1):
            phases = ", ".join(f"{k} {'-' if v is None else f'{1e3 * v:.0f} ms'}" for k, v in record["phases_s"].items())
            moved = record["bytes"]
            ahead = "prepared ahead" if record["prepared_ahead"] else "prepared on the fault"
            rows.append(f"recovery {i}: {record['cause']} -> plan {record['plan']} ({ahead})")
            rows.append(f"  phases: {phases}")
            rows.append(f"  weights: {_mib(moved['peer'] + moved['host'])} moved ({_mib(moved['peer'])} between devices, "
                        f"{_mib(moved['host'])} from the coordinator), {_mib(moved['kept'])} kept; a full reload "
                        f"is {_mib(moved['full_reload'])}")
            rows += [f"  note: {note}" for note in record["notes"]]
        atol, rtol = self.tolerance
        checked = [r for r in self.requests if r.matched is not None]
        verdict = "yes" if self.all_matched else "NO"
        rows.append(f"every output matched the reference (atol={atol:g}, rtol={rtol:g}, {len(checked)} of "
                    f"{len(self.requests)} requests compared): {verdict}")
        return "\n".join(rows)


def run_trial(bundle_dir: str | Path, options: ServeOptions, requests: int, inputs: Sequence[str] | None = None,
              output: str | Path | None = None, request_timeout_s: float | None = None) -> TrialResult:
    from galaxy.host.launcher import TOLERANCE_BY_WIRE_DTYPE

    plan = HostBundle.load(bundle_dir)
    files = [layout.load_tensors(p) for p in inputs or ()] or [plan.example_inputs]
    reference = plan.path / layout.REFERENCE_OUTPUTS
    expected = layout.load_tensors(reference) if not inputs and reference.is_file() else None
    tolerance = TOLERANCE_BY_WIRE_DTYPE.get(plan.plan.get("wire_dtype", "float32"), TOLERANCE_BY_WIRE_DTYPE["float32"])
    result = TrialResult([], [], [], tolerance=tolerance)
    with serving(plan, options) as coordinator:
        _await_prepared(coordinator)
        timeout = request_timeout_s or coordinator.request_timeout_s
        for number in range(1, requests + 1):
            started = time.monotonic()
            try:
                outputs = coordinator.submit(files[(number - 1) % len(files)]).result(timeout=timeout)
            except (GalaxyRuntimeError, TimeoutError) as exc:
                served = coordinator.plan
                result.requests.append(TrialRequest(number, None, served.sha[:12], served.devices, None,
                                                    error=" ".join(str(exc).split()) or type(exc).__name__))
                break
            served = coordinator.plan
            row = TrialRequest(number, time.monotonic() - started, served.sha[:12], served.devices, None)
            if expected is not None:
                errors, row.matched = output_errors(outputs, expected, tolerance)
                row.max_abs_error = max(errors.values(), default=0.0)
            result.requests.append(row)
            result.last_outputs = outputs
        result.recoveries = [record.to_json() for record in coordinator.records]
        if coordinator.faults is not None:
            result.faults = [f"{f['fault'].spec} ({f['device']})" for f in coordinator.faults.fired]
    if output and result.last_outputs:
        layout.save_tensors(output, result.last_outputs)
    return result


def _await_prepared(coordinator) -> None:
    recovery = coordinator.recovery
    if recovery is None:
        return
    started = time.monotonic()
    if not recovery.wait_idle(_READY_TIMEOUT_S):
        log.warning("galaxy-run: the switches for a lost device are not prepared after %.0f s; starting anyway",
                    _READY_TIMEOUT_S)
    status = recovery.status()
    if status["why_not"]:
        log.warning("galaxy-run: %s", status["why_not"])
    else:
        log.warning("galaxy-run: recovery ready after %.1f s: prepared %s", time.monotonic() - started,
                    "; ".join(status["prepared"]) or "nothing (no single device can be lost)")


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"
