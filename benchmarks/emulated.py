"""Running plain processes inside emulated devices for the benchmarks (the reference HMP, the
collective micro-benchmarks); bundles run through galaxy.host.launcher.run_emulated.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

from galaxy.host.emulate import EmulatedCluster


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
