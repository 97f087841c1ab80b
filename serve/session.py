"""A served cluster, up and formed: rank processes, the coordinator, its recovery and injected faults.

    with serving(bundle, options) as coordinator:     galaxy-serve puts HTTP in front of it;
        coordinator.submit(inputs).result()           galaxy-run --inject sends requests itself

`add_arguments` gives galaxy-serve and galaxy-run the same recovery and fault-injection options.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from galaxy.runtime import auth
from galaxy.runtime.errors import UsageError

from .bundles import HostBundle
from .coordinator import Coordinator
from .errors import ServiceUnavailable
from .faults import FaultInjector, parse_faults
from .recovering import RecoverySettings
from .recovery import ModelSource, Recovery, RecoveryUnavailable
from .watch import WatchSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    mode: str = "local"  # local | emulate | hosts
    hosts: str | None = None
    cluster_json: str | None = None
    token_file: str | None = None
    threads: int | None = None
    timeout_s: float = 60.0
    heartbeat_s: float = 1.0
    dead_after_s: float = 5.0
    connect_timeout_s: float = 120.0
    recovery: bool = True
    model: str | None = None
    size: str | None = None
    recovery_dir: str | None = None
    prepare_ahead: bool = True
    settings: RecoverySettings = field(default_factory=RecoverySettings)
    inject: tuple[str, ...] = ()

    @classmethod
    def from_args(cls, args: argparse.Namespace, mode: str) -> "ServeOptions":
        watch = WatchSettings(margin=args.straggler_margin, requests=args.straggler_requests,
                              smoothing=args.smoothing, min_gain=args.min_gain)
        return cls(mode=mode, hosts=getattr(args, "hosts", None), cluster_json=args.cluster_json,
                   token_file=getattr(args, "token_file", None), threads=args.threads, timeout_s=args.timeout,
                   heartbeat_s=args.heartbeat, dead_after_s=args.dead_after,
                   connect_timeout_s=getattr(args, "connect_timeout", 120.0), recovery=not args.no_recovery,
                   model=args.model, size=args.size, recovery_dir=args.recovery_dir,
                   prepare_ahead=args.prepare == "ahead",
                   settings=RecoverySettings(watch, args.lost_after_failures), inject=tuple(args.inject or ()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Heartbeats, recovery and fault injection, for galaxy-serve and galaxy-run --inject."""
    group = parser.add_argument_group("faults and recovery (docs/FAULTS.md)")
    group.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                       help="heartbeat interval between the coordinator and every rank (default 1)")
    group.add_argument("--dead-after", type=float, default=5.0, metavar="S",
                       help="a rank or the coordinator silent this long is lost (default 5)")
    group.add_argument("--inject", action="append", metavar="SPEC",
                       help="kill:RANK@REQ, slow:RANK:FACTOR@REQ or linkdown:RANK@REQ (REQ from 1, or "
                            "'recovery'); repeatable; --local and --emulate only")
    group.add_argument("--no-recovery", action="store_true",
                       help="a lost device stops the service (503) instead of a re-plan")
    group.add_argument("--model", metavar="MODEL",
                       help="the model the bundle was compiled from, for re-planning (default: plan.json's source)")
    group.add_argument("--size", metavar="SIZE", help="its --size (default: plan.json's model_options)")
    group.add_argument("--recovery-dir", metavar="DIR",
                       help="where re-planned bundles go (default: a temporary folder removed at exit)")
    group.add_argument("--prepare", choices=("ahead", "on-fault"), default="ahead",
                       help="prepare the switch for each single device lost ahead (default), or only on a fault")
    defaults = WatchSettings()
    group.add_argument("--straggler-margin", type=float, default=defaults.margin, metavar="M",
                       help=f"a device 1+M times slower than the others, relative to the plan, straggles "
                            f"(default {defaults.margin:g})")
    group.add_argument("--straggler-requests", type=int, default=defaults.requests, metavar="N",
                       help=f"... for N requests in a row (default {defaults.requests})")
    group.add_argument("--smoothing", type=int, default=defaults.smoothing, metavar="N",
                       help=f"measured times are averaged over N requests (default {defaults.smoothing})")
    group.add_argument("--min-gain", type=float, default=defaults.min_gain, metavar="G",
                       help=f"switch only to a plan predicted G faster (default {defaults.min_gain:g})")
    group.add_argument("--lost-after-failures", type=int, default=RecoverySettings().lost_after_failures,
                       metavar="N", help="a device its peers' collectives blame N times in a row is lost "
                                         f"(default {RecoverySettings().lost_after_failures})")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.heartbeat <= 0 or args.dead_after <= args.heartbeat:
        parser.error("--heartbeat must be > 0 and --dead-after > --heartbeat")
    if args.straggler_margin <= 0 or args.straggler_requests < 1 or args.smoothing < 1 or args.lost_after_failures < 1:
        parser.error("--straggler-margin must be > 0; --straggler-requests, --smoothing and "
                     "--lost-after-failures >= 1")
    try:
        parse_faults(args.inject)
    except UsageError as exc:
        parser.error(str(exc))
    if args.inject and getattr(args, "hosts", None):
        parser.error("--inject needs --local or --emulate (faults are injected into processes this machine runs)")


@contextlib.contextmanager
def serving(plan: HostBundle, options: ServeOptions) -> Iterator[Coordinator]:
    """Start the ranks, the coordinator, its recovery and the injected faults; yield once the
    first group serves; stop everything on the way out."""
    torch.set_num_threads(1)  # this process only coordinates (and re-plans at low priority): cores go to ranks
    with contextlib.ExitStack() as stack:
        recovery = _recovery(plan, options, stack)  # its folder goes last
        cluster = stack.enter_context(_ranks(plan, options))
        control = cluster.listener.getsockname()
        log.warning("galaxy-serve: the coordinator listens for ranks on %s:%d", control[0], control[1])
        faults = parse_faults(options.inject)
        injector = FaultInjector(faults, cluster.faults, plan.devices) if faults else None
        coordinator = Coordinator(plan, cluster.token, cluster.listener, cluster.placement,
                                  heartbeat_s=options.heartbeat_s, dead_after_s=options.dead_after_s,
                                  timeout_s=options.timeout_s, connect_timeout_s=options.connect_timeout_s,
                                  exit_status=cluster.processes.exit_status, recovery=recovery,
                                  settings=options.settings, faults=injector)
        stack.callback(coordinator.close)
        if recovery is not None:
            recovery.start()
        limit = options.connect_timeout_s + 3 * options.timeout_s
        try:
            coordinator.start().result(timeout=limit)
        except concurrent.futures.TimeoutError as exc:
            raise ServiceUnavailable(f"the ranks did not form a group within {limit:g} s; see their log lines "
                                     "above") from exc
        yield coordinator


def _recovery(plan: HostBundle, options: ServeOptions, stack: contextlib.ExitStack) -> Recovery | None:
    if not options.recovery:
        return None
    if "generation" in plan.plan:  # a re-plan would have to re-plan decode and move caches too
        log.warning("galaxy-serve: no re-planning on faults for a generation bundle (galaxy-compile --max-len); "
                    "a lost device stops it")
        return None
    try:
        source = ModelSource.of(plan, options.model, options.size)
    except RecoveryUnavailable as exc:
        log.warning("galaxy-serve: no re-planning on faults: %s", exc)
        return None
    if options.recovery_dir:
        folder = Path(options.recovery_dir)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="galaxy-recovered-",
                                                                      ignore_cleanup_errors=True)))
    log.info("galaxy-serve: re-planned bundles go to %s", folder)
    return Recovery(plan, source, folder, ahead=options.prepare_ahead)


def _ranks(plan: HostBundle, options: ServeOptions):
    from . import ranks

    if options.mode == "hosts":
        from galaxy.host.hosts import HostsFile

        return ranks.ssh_ranks(plan, HostsFile.load(options.hosts), options.timeout_s)
    token = auth.load_token(options.token_file) if options.token_file or os.environ.get(auth.TOKEN_ENV) \
        else auth.new_token().encode()
    if options.mode == "emulate":
        cluster = _read_cluster(options.cluster_json) if options.cluster_json else None
        return ranks.emulated_ranks(plan, token, options.timeout_s, cluster)
    return ranks.local_ranks(plan, token, options.timeout_s, options.threads)


def _read_cluster(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--cluster-json {path}: {exc}") from exc
    return data.get("cluster", data)
