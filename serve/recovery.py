"""What galaxy-serve keeps ready to re-plan: its copy of the model, what every device holds, and
the switches for each single device lost, prepared ahead.

    recovery = Recovery(bundle, ModelSource.of(bundle, ...), work_dir)
    recovery.start()                         capture, check, prepare ahead (a background thread)
    switch = recovery.switch(running, devices, holds, slowdown=..., reason=...)
    ... the coordinator forms the new group with switch.moves ...
    recovery.commit(switch, holds)           the new shards are what the devices hold now

A switch is a new plan for the devices left (planner/replan.py, from plan.json's summary and
cluster), its bundle (new rank modules; galaxy-compile's lowering and codegen run here, on the
model captured once at start), and the weight moves that turn what each device holds into its
new shard (serve/reshard.py): pieces it keeps, pieces a peer sends, pieces the coordinator sends
from its copy of the model. Capturing takes seconds and re-planning, lowering and matching
another one or two for a model of BERT-base's size, more than the recovery target; so the model
is captured once at start, and after every plan change the switches for losing each one device
are prepared in the background, at low priority: a lost device then costs only the transfer.
Stragglers and a second fault are prepared when they happen (a straggler is handled while the
old plan keeps serving).

The copy is checked once against the bundle: lowering the running plan from it must give the
very tensors of every rank's weight file, else recovery stays off and says why (another model,
size or version than the bundle was compiled from).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

import torch

from galaxy.compiler.errors import GalaxyError, InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.report.document import document_from_json
from galaxy.runtime import bundle as layout
from galaxy.runtime.errors import GalaxyRuntimeError

from .bundles import HostBundle
from .reshard import HoldingsIndex, Moves, plan_moves

log = logging.getLogger(__name__)

Holds = Mapping[str, tuple[str, int]]  # device -> (sha of the plan whose shard it holds, its rank there)


class RecoveryUnavailable(GalaxyRuntimeError):
    """galaxy-serve cannot re-plan (no model copy, or none that matches); the message says why."""


@dataclass(frozen=True)
class ModelSource:
    """Where the coordinator's copy of the model comes from: MODEL and how it was captured."""

    path: str
    size: str | None = None
    seq_len: int | None = None
    method: str = "export"

    @classmethod
    def of(cls, host_bundle: HostBundle, model: str | None = None, size: str | None = None) -> "ModelSource":
        """plan.json's source and model_options, or `model` (and `size`) given by the user."""
        options = host_bundle.plan.get("model_options") or {}
        if model:
            candidates = [Path(model)]
        else:  # where galaxy-compile found it, seen from the bundle; else the name, from here
            relative = options.get("path_from_bundle")
            candidates = [host_bundle.path / relative] if relative else []
            candidates += [Path(host_bundle.plan["source"])] if host_bundle.plan.get("source") else []
        found = next((path for path in candidates if path.exists()), None)
        if found is None:
            tried = ", ".join(str(path) for path in candidates) or "nothing (plan.json names no model)"
            raise RecoveryUnavailable(
                f"the model this bundle was compiled from is not here (looked at {tried}); pass --model MODEL "
                "(the model.py, config.json or checkpoint it was compiled from) to re-plan on faults")
        return cls(str(found.resolve()), size or options.get("size"), options.get("seq_len"),
                   options.get("capture", "export"))


@dataclass
class Switch:
    """A new plan for the devices left, its bundle and the weight moves onto it."""

    reason: str
    bundle: HostBundle
    plan: Plan
    moves: Moves
    current_predicted_s: float | None  # the running plan's, at the rates the new one assumes
    predicted_s: float
    seconds: dict[str, float] = field(default_factory=dict)  # plan, generate, moves
    prepared_ahead: bool = False

    def describe(self) -> str:
        return (f"{self.reason}: {self.bundle.describe()} on {', '.join(self.bundle.devices)}, predicted "
                f"{1e3 * self.predicted_s:.1f} ms; {self.moves.total.describe()}")


class Recovery:
    def __init__(self, first: HostBundle, source: ModelSource, work_dir: str | Path, ahead: bool = True):
        self.first, self.source, self.ahead = first, source, ahead
        self.work_dir = Path(work_dir)
        self.model = None  # the captured copy: (captured, graph, summary)
        self.why_not: str | None = "capturing the model"
        self._shards: dict[str, dict[int, dict[str, torch.Tensor]]] = {}  # plan sha -> rank -> shard
        self._bundles: dict[str, HostBundle] = {first.sha: first}
        self._index: tuple[tuple, HoldingsIndex] | None = None  # of the holdings last planned from
        self._prepared: dict[tuple, Switch | GalaxyError] = {}  # under _table
        self._table = threading.Lock()
        self._lock = threading.RLock()  # one preparation at a time
        self._urgent = threading.Event()  # the coordinator is waiting: background work yields
        self._ready = threading.Event()
        self._idle = threading.Event()  # nothing left to prepare ahead (or write) for the plan in force
        self._wanted_ahead: tuple[HostBundle, dict] | None = None
        self._wake = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    # --- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._background, name="galaxy-recovery", daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the background work (it stops between two steps) and wait for it."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def wait_idle(self, timeout_s: float) -> bool:
        """Every switch the plan in force may need is prepared ahead (the background is idle)."""
        return self._idle.wait(timeout_s)

    def status(self) -> dict:
        with self._table:
            prepared = sorted(v.reason for v in self._prepared.values() if isinstance(v, Switch) and v.prepared_ahead)
        return {"ready": self._ready.is_set() and self.why_not is None, "why_not": self.why_not,
                "model": self.source.path, "prepared": prepared}

    # --- what the coordinator asks ------------------------------------------------------------------

    def switch(self, running: HostBundle, devices: list[str], holds: Holds, slowdown: Mapping[str, float] | None = None,
               reason: str = "") -> Switch:
        """The switch from `running` to a plan for `devices` (at their `slowdown`), from what each
        device `holds`; prepared ahead when it was. Raises InfeasiblePlanError when they cannot
        hold the model, RecoveryUnavailable when there is no model copy."""
        self._urgent.set()
        try:
            self._await_model()
            key = self._key(running, devices, holds, slowdown)
            with self._lock:
                with self._table:
                    ready = self._prepared.get(key)
                if isinstance(ready, GalaxyError):
                    raise ready
                if ready is not None:
                    return replace(ready, reason=reason or ready.reason)
                return self._prepare(running, devices, holds, slowdown or {}, reason, ahead=False)
        finally:
            self._urgent.clear()

    def commit(self, switch: Switch, holds: Holds) -> None:
        """`switch` serves: remember its shards (what the devices hold now), write its weight files
        into its bundle (the bundle is then whole, and galaxy-run can run it), and prepare ahead
        for the plan now running."""
        self._bundles[switch.bundle.sha] = switch.bundle
        with self._wake:
            self._idle.clear()
            self._wanted_ahead = (switch.bundle, dict(holds))
            self._wake.notify_all()

    def know(self, host_bundle: HostBundle) -> None:
        """A plan whose group formed: its shards may be what devices hold from now on."""
        self._bundles.setdefault(host_bundle.sha, host_bundle)

    def shard(self, plan_sha: str, rank: int) -> dict[str, torch.Tensor]:
        return self._shards_of(self._bundles[plan_sha])[rank]

    # --- the background thread ---------------------------------------------------------------------

    def _background(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # the ranks come first
        except OSError:
            pass
        try:
            self._capture_and_check()
        except (GalaxyError, GalaxyRuntimeError, OSError, RuntimeError) as exc:
            self.why_not = f"recovery is off: {' '.join(str(exc).split())}"
            log.error("galaxy-serve: %s", self.why_not)
            self._ready.set()
            self._idle.set()
            return
        self.why_not = None
        self._ready.set()
        if self._closing:
            return
        log.info("galaxy-serve: recovery ready (model %s captured and checked against the bundle)", self.source.path)
        if self.ahead:
            self._prepare_ahead(self.first, {d: (self.first.sha, r) for r, d in enumerate(self.first.devices)})
        while True:
            with self._wake:
                if self._wanted_ahead is None:
                    self._idle.set()
                while self._wanted_ahead is None and not self._closing:
                    self._wake.wait()
                if self._closing:
                    return
                running, holds = self._wanted_ahead
                self._wanted_ahead = None
            if self._closing:
                return
            self._write_weights(running)
            if self.ahead:
                self._prepare_ahead(running, holds)

    def _capture_and_check(self) -> None:
        from galaxy.compiler.pipeline import capture_model

        started = time.perf_counter()
        self.model = capture_model(self.source.path, self.source.size, self.source.seq_len, self.source.method)
        log.info("galaxy-serve: captured %s in %.1f s for re-planning", self.source.path, time.perf_counter() - started)
        summary = self.model[2].to_json()
        if summary != self.first.plan["model"]:
            differ = sorted(k for k in summary if summary[k] != self.first.plan["model"].get(k))
            raise RecoveryUnavailable(f"the model at {self.source.path} (size {self.source.size}) is not the one "
                                      f"the bundle was compiled from ({', '.join(differ)} differ)")
        shards = self._shards_of(self.first)
        for rank, device in enumerate(self.first.devices):
            on_disk = layout.load_tensors(self.first.path / layout.rank_weights(rank))
            lowered = shards[rank]
            if set(on_disk) != set(lowered) or any(not torch.equal(on_disk[k], lowered[k]) for k in lowered):
                raise RecoveryUnavailable(f"the model at {self.source.path} does not give the weights of rank {rank} "
                                          f"({device}) in {self.first.path}: another model, size or version")
            shards[rank] = on_disk  # what the device loaded, exactly

    def _prepare_ahead(self, running: HostBundle, holds: Holds) -> None:
        """The switch for losing each one device of `running`, unless the coordinator needs the lock."""
        for lost in running.devices:
            while self._urgent.is_set() and not self._closing:
                time.sleep(0.05)
            if self._closing:
                return
            devices = [d for d in running.devices if d != lost]
            if not devices:
                continue
            with self._lock:
                key = self._key(running, devices, holds, None)
                with self._table:
                    if key in self._prepared:
                        continue
                try:
                    self._prepare(running, devices, holds, {}, f"lost {lost}", ahead=True)
                except GalaxyError as exc:
                    with self._table:
                        self._prepared[key] = exc
                    log.warning("galaxy-serve: if %s is lost: %s", lost, exc)

    # --- preparing one switch ------------------------------------------------------------------------

    def _prepare(self, running: HostBundle, devices: list[str], holds: Holds, slowdown: Mapping[str, float],
                 reason: str, ahead: bool) -> Switch:
        from galaxy.compiler.planner.replan import replan

        document = document_from_json(running.plan, str(running.path))
        if document.summary is None or document.cluster is None:
            raise RecoveryUnavailable(f"{running.path}/plan.json has no model summary or cluster to re-plan from")
        seconds = {}
        started = time.perf_counter()
        try:
            found = replan(document.summary, document.cluster, document.plan, devices, slowdown)
        except InfeasiblePlanError as exc:
            raise InfeasiblePlanError(f"the devices left ({', '.join(devices)}) cannot hold the model: {exc}",
                                      exc.shortfall_bytes_by_device) from exc
        seconds["plan"] = time.perf_counter() - started
        plan = replace(found.plan, notes=(f"re-planned by galaxy-serve: {reason} (was plan {running.sha[:12]})",
                                          *found.plan.notes))
        started = time.perf_counter()
        new_bundle = self._write_code(running, plan, found.cluster)
        seconds["generate"] = time.perf_counter() - started
        started = time.perf_counter()
        held_as = {d: {"plan": holds[d][0], "rank": holds[d][1]} for d in devices if d in holds}
        holdings = {d: self.shard(*holds[d]) for d in devices if d in holds}
        moves = plan_moves(self._shards_of(new_bundle), new_bundle.devices, holdings, held_as, self._index_of(holds))
        seconds["moves"] = time.perf_counter() - started
        switch = Switch(reason, new_bundle, plan, moves, found.current_predicted_s, found.predicted_s, seconds, ahead)
        with self._table:
            self._prepared[self._key(running, devices, holds, slowdown)] = switch
        if ahead:  # lowered again if it ever serves; a prepared switch keeps only its pieces
            self._shards.pop(new_bundle.sha, None)
        log.info("galaxy-serve: prepared%s %s (plan %.2f s, modules %.2f s, moves %.2f s)",
                 " ahead" if ahead else "", switch.describe(), seconds["plan"], seconds["generate"], seconds["moves"])
        return switch

    def _index_of(self, holds: Holds) -> HoldingsIndex:
        """The index of what every device holds, built once for all the switches from those holdings."""
        key = tuple(sorted(holds.items()))
        if self._index is None or self._index[0] != key:
            self._index = (key, HoldingsIndex({d: self.shard(*held) for d, held in holds.items()}))
        return self._index[1]

    def _write_code(self, running: HostBundle, plan: Plan, cluster) -> HostBundle:
        """The new bundle's plan.json, rank modules, runtime and example files (weights come at commit)."""
        from galaxy.compiler.codegen.render import render_rank
        from galaxy.compiler.lower.shard import lower, plan_id
        from galaxy.compiler.passes.wire_error import expected_wire_error

        captured, graph, _ = self.model
        lowered = lower(graph, captured, plan, running.plan.get("source", ""))
        out = self.work_dir / f"{self.first.path.name}-{plan_id(plan)}"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        document = {**running.plan, "plan": plan.to_json(), "cluster": cluster.to_json()}
        document.pop("expected_max_abs_error", None)
        wire_error = expected_wire_error(captured, graph, plan)
        if wire_error:
            document["expected_max_abs_error"] = wire_error
        (out / layout.PLAN).write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        for rank in lowered:
            (out / layout.rank_module(rank.program.rank)).write_text(render_rank(rank.program))
        for name in (layout.EXAMPLE_INPUTS, layout.REFERENCE_OUTPUTS):
            if (self.first.path / name).is_file():
                (out / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(self.first.path / name, out / name)
        shutil.copytree(self.first.path / layout.RUNTIME_DIR, out / layout.RUNTIME_DIR,
                        ignore=shutil.ignore_patterns("__pycache__"))
        layout.write_manifest(out)
        new_bundle = HostBundle.load(out)
        self._bundles[new_bundle.sha] = new_bundle
        self._shards[new_bundle.sha] = {r.program.rank: r.weights for r in lowered}
        return new_bundle

    def _write_weights(self, host_bundle: HostBundle) -> None:
        """Complete a recovered bundle on this machine: its weight files, then its manifest."""
        if (host_bundle.path / layout.rank_weights(0)).is_file():
            return
        for rank, shard in self._shards_of(host_bundle).items():
            layout.save_tensors(host_bundle.path / layout.rank_weights(rank), shard)
        layout.write_manifest(host_bundle.path)
        log.info("galaxy-serve: wrote the weights of %s", host_bundle.describe())

    def _shards_of(self, host_bundle: HostBundle) -> dict[int, dict[str, torch.Tensor]]:
        """Every rank's shard of a plan this process knows, lowered from the model copy once."""
        shards = self._shards.get(host_bundle.sha)
        if shards is None:
            from galaxy.compiler.lower.shard import lower

            captured, graph, _ = self.model
            plan = Plan.from_json(host_bundle.plan["plan"])
            shards = {r.program.rank: r.weights for r in lower(graph, captured, plan, host_bundle.plan.get("source", ""))}
            self._shards[host_bundle.sha] = shards
        return shards

    def _await_model(self) -> None:
        if not self._ready.wait(timeout=600):
            raise RecoveryUnavailable("the model copy is still being captured")
        if self.why_not is not None:
            raise RecoveryUnavailable(self.why_not)

    @staticmethod
    def _key(running: HostBundle, devices, holds: Holds, slowdown) -> tuple:
        return (running.sha, tuple(sorted(holds.get(d, ("", -1)) + (d,) for d in devices)),
                tuple(sorted((slowdown or {}).items())), ", ".join(sorted(set(running.devices) - set(devices))))

