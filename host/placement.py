"""Where a bundle's ranks run on this machine, and how they meet: over loopback, or each in an
emulated device of its own (host/emulate.py). galaxy-run and galaxy-generate start their ranks
through the same Placement, so both modes work the same way for both.

    with on_loopback() as placement:                      # or on_emulated_devices(bundle_dir)
        argv = placement.command(rank, [python, rank_module, *placement.master_args(rank), ...])
"""
from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from galaxy.runtime import bundle, rendezvous
from galaxy.runtime.errors import UsageError

WrapCommand = Callable[[int, list[str]], list[str]]  # (rank, argv) -> argv to execute


@dataclass(frozen=True)
class Placement:
    master_addr: str
    master_port: int
    # Bound to master_addr:master_port and listening, inherited by rank 0, which serves the
    # rendezvous on it: no other process can take the port between choosing it and listening.
    master_socket: socket.socket | None = None
    wrap_command: WrapCommand | None = None
    rank_env: Callable[[int], Mapping[str, str]] | None = None

    def master_args(self, rank: int) -> list[str]:
        """The rank module's arguments to reach the rendezvous."""
        args = ["--master", f"{self.master_addr}:{self.master_port}"]
        if rank == 0 and self.master_socket is not None:
            args += ["--master-fd", str(self.master_socket.fileno())]
        return args

    def command(self, rank: int, argv: list[str]) -> list[str]:
        return self.wrap_command(rank, argv) if self.wrap_command else argv

    def env(self, rank: int) -> Mapping[str, str]:
        return self.rank_env(rank) if self.rank_env else {}

    def inherited_fds(self, rank: int) -> list[int]:
        return [self.master_socket.fileno()] if rank == 0 and self.master_socket is not None else []


@contextlib.contextmanager
def on_loopback() -> Iterator[Placement]:
    """Every rank a process of this machine, meeting on 127.0.0.1."""
    listener = rendezvous.listen("127.0.0.1", 0)
    try:
        yield Placement("127.0.0.1", listener.getsockname()[1], master_socket=listener)
    finally:
        listener.close()


def loopback_threads(world_size: int) -> int:
    """The machine's cores divided among the ranks (at least 1), so they do not oversubscribe it."""
    return max(1, (os.cpu_count() or 1) // world_size)


@contextlib.contextmanager
def on_emulated_devices(bundle_dir: str | Path, cluster: Mapping | None = None, *, threads: int | None = None,
                        cpu_mode: str = "auto", shared_nic: bool | None = None) -> Iterator[Placement]:
    """Every rank in an emulated device of its own (host/emulate.py): `cluster` is plan.json's
    cluster layout, by default the bundle's own. Without `threads`, each rank gets its device's
    share of threads. Needs root; raises EmulationUnavailable with the reason."""
    from galaxy.host.emulate import EmulatedCluster

    document = bundle.load_plan(bundle_dir)
    cluster = cluster if cluster is not None else document.get("cluster")
    if cluster is None:
        raise UsageError(f"{bundle_dir}/plan.json has no 'cluster' to emulate; pass one "
                         "(--cluster-json, or cluster= in Python)")
    emulator = EmulatedCluster.from_cluster_json(cluster, document["plan"]["devices"], cpu_mode=cpu_mode,
                                                 shared_nic=shared_nic)

    def wrap(rank: int, argv: Sequence[str]) -> list[str]:
        own_threads = ["--threads", str(emulator.threads(rank))] if threads is None else []
        return emulator.wrap_command(rank, [*argv, *own_threads])

    with emulator:
        yield Placement(emulator.master_addr, emulator.master_port, wrap_command=wrap, rank_env=emulator.rank_env)
