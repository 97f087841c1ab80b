"""Running things inside emulated devices for the benchmarks: bundles, and plain processes
(the reference HMP, the collective micro-benchmarks), with the emulator's CPU mode and
network-card option chosen per run.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from galaxy.host.emulate import EmulatedCluster
from galaxy.host.launcher import RunResult, run_ranks
from galaxy.runtime import bundle as bundle_files


def emulator_for_bundle(bundle_dir: Path, cpu_mode: str = "auto", shared_nic: bool = False) -> EmulatedCluster:
    """The devices of the bundle's own cluster (plan.json), one per rank, not yet started."""
    document = bundle_files.load_plan(bundle_dir)
    return EmulatedCluster.from_cluster_json(document["cluster"], document["plan"]["devices"],
                                             cpu_mode=cpu_mode, shared_nic=shared_nic)


def run_bundle(bundle_dir: Path, emulator: EmulatedCluster, *, repeat: int, warmup: int, timeout_s: float,
               env: Mapping[str, str] | None = None,
               on_line: Callable[[int, str], None] | None = None) -> RunResult:
    """Every rank of the bundle in its device of `emulator` (started), with the device's threads;
    what `galaxy-run --emulate` does, with the emulator chosen by the caller."""
    def wrap(rank: int, argv: list[str]) -> list[str]:
        return emulator.wrap_command(rank, [*argv, "--threads", str(emulator.threads(rank))])

    return run_ranks(bundle_dir, master_addr=emulator.master_addr, master_port=emulator.master_port,
                     wrap_command=wrap, rank_env=emulator.rank_env, repeat=repeat, warmup=warmup,
                     timeout_s=timeout_s, env=env, on_line=on_line)


def run_processes(emulator: EmulatedCluster, argv_of_rank: Callable[[int], Sequence[str]], timeout_s: float,
                  cwd: Path | None = None) -> list[str]:
    """One process per device of `emulator` (started); returns each one's output (stdout and
    stderr). RuntimeError naming the first rank that failed, or those still running after
    `timeout_s`; every process is killed then."""
    procs, logs = [], []
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-") as scratch:
        try:
            for rank in range(emulator.size):
                logs.append(open(Path(scratch) / f"rank_{rank}.log", "w+"))
                procs.append(subprocess.Popen(
                    emulator.wrap_command(rank, list(argv_of_rank(rank))),
                    env={**os.environ, **emulator.rank_env(rank)}, cwd=cwd, stdout=logs[-1],
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            _wait_all(procs, logs, timeout_s)
            return [_text(handle) for handle in logs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            for handle in logs:
                handle.close()


def _wait_all(procs: list[subprocess.Popen], logs: list, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [proc.poll() for proc in procs]
        failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            rank = failed[0]
            raise RuntimeError(f"rank {rank} exited with {codes[rank]}: {_text(logs[rank]).strip()[-400:]}")
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            running = [rank for rank, code in enumerate(codes) if code is None]
            raise RuntimeError(f"ranks {running} still running after {timeout_s:g} s")
        time.sleep(0.1)


def _text(handle) -> str:
    handle.flush()
    handle.seek(0)
    return handle.read()
