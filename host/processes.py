"""Child processes the host tools start (ranks, ssh sessions, fillers): started so that they
die with their parent, stopped without ever raising.

`stop_processes` runs inside `finally` blocks: it must not hide the error that got us there,
so it logs what it cannot do instead of raising.
"""
from __future__ import annotations

import collections
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                  "MASTER_PORT", "GROUP_RANK")
OnLine = Callable[[int, str], None]  # (rank, one line of the rank's output)


def die_with_parent() -> None:
    """preexec_fn: the kernel sends SIGKILL to this child when its parent dies, even by SIGKILL
    (so a killed launcher leaves no rank or filler loop behind). Linux only; elsewhere a no-op."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def child_env(overrides: Mapping[str, str] | None, per_rank: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without torchrun's variables, plus the overrides."""
    child = {k: v for k, v in os.environ.items() if k not in _TORCHRUN_VARS}
    child.update(overrides or {})
    child.update(per_rank)
    child["PYTHONUNBUFFERED"] = "1"
    return child


def start_rank(command: Sequence[str], env: Mapping[str, str], pass_fds: Sequence[int] = (),
               stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """A rank in a session of its own (so its whole group can be signalled), output piped."""
    return subprocess.Popen(list(command), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=stdin, text=True, errors="replace", start_new_session=True,
                            pass_fds=tuple(pass_fds), preexec_fn=die_with_parent)


def pump(proc: subprocess.Popen, rank: int, tail: collections.deque, on_line: OnLine) -> None:
    """Read a child's output line by line into `tail` and `on_line` until it closes."""
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        on_line(rank, line)


def last_words(tail: collections.deque) -> str:
    """A child's own one-line error if it printed one, else its last output line."""
    lines = [line for line in tail if line.strip()]
    errors = [line for line in lines if line.startswith("galaxy rank") or "Error" in line]
    return (errors or lines or ["(no output)"])[-1].strip()


def stop_processes(procs: Sequence[subprocess.Popen], grace_s: float = 3.0) -> None:
    """SIGTERM every live process group, SIGKILL those still there after `grace_s`; never raises."""
    alive = [proc for proc in procs if proc.poll() is None]
    for proc in alive:
        signal_group(proc, signal.SIGTERM)
    end = time.monotonic() + grace_s
    for proc in alive:
        try:
            proc.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                log.warning("process %d did not exit 5 s after SIGKILL (stuck in the kernel?)", proc.pid)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal the child's process group (it is a session leader: its group id is its pid)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError) as exc:
        if isinstance(exc, PermissionError):
            log.warning("cannot signal process group %d: %s", proc.pid, exc)


def terminate_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM and SIGHUP raise SystemExit(128 + signal) in the main thread, so `finally`
    blocks stop child processes; returns a function restoring the previous handlers."""
    previous = {}

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
    return restore


def cli_exit_code(prog: str, work: Callable[[], int], terminated_ok: bool = False) -> int:
    """Run a command-line tool's `work` with SIGTERM/SIGHUP unwinding its `finally` blocks; a
    GalaxyRuntimeError is one line on stderr and exit 2, Ctrl-C exit 130, SIGTERM/SIGHUP exit
    128 + the signal (0 with `terminated_ok`: how a server is normally stopped)."""
    from galaxy.runtime.errors import GalaxyRuntimeError

    terminate_on_sigterm()
    try:
        return work()
    except GalaxyRuntimeError as exc:
        sys.stderr.write(f"{prog}: error: {' '.join(str(exc).split())}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted; stopped every rank\n")
        return 130
    except SystemExit as exc:
        if exc.code not in (128 + signal.SIGTERM, 128 + signal.SIGHUP):
            raise
        sys.stderr.write(f"{prog}: terminated; stopped every rank\n")
        return 0 if terminated_ok else int(exc.code)
