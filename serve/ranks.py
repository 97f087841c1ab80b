"""Starting the persistent ranks of `galaxy-serve`, one way per mode, and stopping them.

Each mode yields a `RankCluster`: the coordinator's listening socket (bound only to the address
the ranks reach it at), the placement (each device's address and bundle folder), the rank
processes and, for local and emulated ranks, how to inject faults into them (serve/faults.py). Every rank runs `rank_<k>.py --serve ADDRESS:PORT` and dies with galaxy-serve:
local and emulated ranks are its children (and die with it even after a SIGKILL); remote
ranks run under an ssh session and exit as soon as they lose the coordinator.

    local_ranks     every rank a process on this machine, on loopback
    emulated_ranks  every rank in an emulated device (host/emulate.py), the coordinator's
                    socket in the emulator's control namespace
    ssh_ranks       every rank on its device, started over ssh (host/hosts.py) from the
                    bundle copy galaxy-deploy put there; the token travels on ssh's stdin
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping

from galaxy.host.hosts import HostsFile, deployed_path
from galaxy.host.processes import child_env, last_words, pump, start_rank, stop_processes
from galaxy.runtime import auth, bundle, rendezvous
from galaxy.runtime.errors import UsageError

from .bundles import HostBundle, Placement
from .faults import EmulatorFaults, FaultActions, SignalFaults

log = logging.getLogger(__name__)


class RankProcesses:
    """The processes running the ranks, by device; their output goes to the log."""

    def __init__(self):
        self.procs: dict[str, subprocess.Popen] = {}
        self._tails: dict[str, collections.deque] = {}
        self._readers: list[threading.Thread] = []

    def start(self, device: str, command: list[str], env: Mapping[str, str], stdin_text: str | None = None) -> None:
        proc = start_rank(command, env, stdin=subprocess.PIPE if stdin_text is not None else subprocess.DEVNULL)
        if stdin_text is not None:
            proc.stdin.write(stdin_text)
            proc.stdin.close()
        self.procs[device] = proc
        self._tails[device] = collections.deque(maxlen=30)
        reader = threading.Thread(target=pump, args=(proc, device, self._tails[device], self._log), daemon=True)
        reader.start()
        self._readers.append(reader)

    def exit_status(self, device: str) -> str | None:
        """'its process exited with code -9 (SIGKILL): <its last words>', or None if unknown."""
        proc = self.procs.get(device)
        if proc is None:
            return None
        try:
            code = proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return "its process is still running"
        named = f" ({signal.Signals(-code).name})" if code < 0 and -code in signal.Signals._value2member_map_ else ""
        return f"its process exited with code {code}{named}: {last_words(self._tails[device])}"

    def stop(self) -> None:
        stop_processes(list(self.procs.values()))
        for reader in self._readers:
            reader.join(timeout=2)

    @staticmethod
    def _log(device: str, line: str) -> None:
        log.info("[%s] %s", device, line)


@dataclass
class RankCluster:
    listener: socket.socket
    placement: Placement
    processes: RankProcesses
    token: bytes
    faults: FaultActions | None = None  # None: faults cannot be injected (ranks over ssh)


def rank_argv(rank: int, control_address: str, timeout_s: float, threads: int | None) -> list[str]:
    argv = [bundle.rank_module(rank), "--serve", control_address, "--timeout", f"{timeout_s:g}"]
    return argv + (["--threads", str(threads)] if threads else [])


@contextlib.contextmanager
def local_ranks(plan: HostBundle, token: bytes, timeout_s: float, threads: int | None = None) -> Iterator[RankCluster]:
    threads = threads or max(1, (os.cpu_count() or 1) // len(plan.devices))
    listener = rendezvous.listen("127.0.0.1", 0)
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    processes = RankProcesses()
    faults = SignalFaults(processes.procs)
    try:
        env = child_env({auth.TOKEN_ENV: token.decode()}, {})
        for rank, device in enumerate(plan.devices):
            argv = rank_argv(rank, address, timeout_s, threads)
            processes.start(device, [sys.executable, "-u", str(plan.path / argv[0]), *argv[1:]], env)
        yield RankCluster(listener, Placement({d: "127.0.0.1" for d in plan.devices}), processes, token, faults)
    finally:
        faults.close()
        processes.stop()
        listener.close()


@contextlib.contextmanager
def emulated_ranks(plan: HostBundle, token: bytes, timeout_s: float, cluster: Mapping | None = None) -> Iterator[RankCluster]:
    from galaxy.host.emulate import EmulatedCluster
    from galaxy.host.netns import in_namespace

    cluster = cluster if cluster is not None else plan.plan.get("cluster")
    if cluster is None:
        raise UsageError(f"{plan.path}/plan.json has no 'cluster' to emulate; pass --cluster-json")
    emulator = EmulatedCluster.from_cluster_json(cluster, plan.devices, control=True)
    processes = RankProcesses()
    faults = EmulatorFaults(processes.procs, emulator, plan.devices)
    with emulator:
        listener = in_namespace(emulator.control_namespace, lambda: rendezvous.listen(emulator.control_address, 0))
        address = f"{emulator.control_address}:{listener.getsockname()[1]}"
        try:
            for rank, device in enumerate(plan.devices):
                argv = rank_argv(rank, address, timeout_s, emulator.threads(rank))
                command = emulator.wrap_command(rank, [sys.executable, "-u", str(plan.path / argv[0]), *argv[1:]])
                env = child_env({auth.TOKEN_ENV: token.decode()}, emulator.rank_env(rank))
                processes.start(device, command, env)
            placement = Placement({d: emulator.address(r) for r, d in enumerate(plan.devices)})
            yield RankCluster(listener, placement, processes, token, faults)
        finally:
            faults.close()
            processes.stop()
            listener.close()


@contextlib.contextmanager
def ssh_ranks(plan: HostBundle, hosts: HostsFile, timeout_s: float) -> Iterator[RankCluster]:
    token = hosts.token()
    targets = hosts.for_plan(plan.devices)
    coordinator = hosts.coordinator_address(targets)
    listener = rendezvous.listen(coordinator, 0)
    address = f"{coordinator}:{listener.getsockname()[1]}"
    processes = RankProcesses()
    try:
        for rank, host in enumerate(targets):
            folder = deployed_path(host.dir, plan.path, plan.sha)
            argv = [host.python, "-u", *rank_argv(rank, address, timeout_s, None), "--token-file", "-"]
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in host.env)
            remote = f"cd {shlex.quote(folder)} && exec env {env} {shlex.join(argv)}"
            processes.start(host.name, hosts.ssh(host, remote), child_env({}, {}), stdin_text=token.decode() + "\n")
        placement = Placement({h.name: h.address for h in targets}, {h.name: h.dir for h in targets})
        yield RankCluster(listener, placement, processes, token)
    finally:
        processes.stop()
        listener.close()
