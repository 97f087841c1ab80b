"""Start a small world of real gloo processes on loopback and collect what each returns.

Shared by the runtime's distributed tests. `run_world(n, fn, *args)` starts n processes, joins them with galaxy.runtime.rendezvous.connect on a free loopback port, calls
`fn(rank, world_size, *args)` (a module-level function, so it pickles) and returns the
per-rank results. A rank that raises or a world that overruns `timeout_s` fails the test
with the rank's traceback; stragglers are killed.
"""
from __future__ import annotations

import os
import queue
import socket
import time
import traceback

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank, world_size, port, fn, args, connect_timeout_s, results):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from galaxy.runtime import rendezvous

    try:
        if connect_timeout_s is not None:
            rendezvous.connect(rank, world_size, "127.0.0.1", port, connect_timeout_s)
        value = fn(rank, world_size, *args)
        results.put((rank, "ok", value))
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put((rank, "error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
    finally:
        rendezvous.close()


_PRELOAD = ["torch", "torch.distributed", "galaxy.runtime.collectives", "galaxy.runtime.overlap",
            "galaxy.runtime.rendezvous"]


def _context():
    """forkserver with torch preloaded: each rank forks from a process that imported torch but
    never ran an op (fork-safe), instead of paying a fresh torch import per rank."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def run_world(world_size: int, fn, *args, timeout_s: float = 60.0,
              connect_timeout_s: float | None = 20.0, allow_errors: bool = False) -> list:
    """Per-rank return values of fn; with allow_errors, a rank's error text is its value."""
    ctx = _context()
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, world_size, port, fn, args, connect_timeout_s,
                                               results), daemon=True)
             for r in range(world_size)]
    for proc in procs:
        proc.start()
    collected: dict[int, tuple[str, object]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(collected) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(set(range(world_size)) - set(collected))
                raise AssertionError(f"ranks {missing} did not finish within {timeout_s} s; "
                                     f"others: {collected}")
            try:
                rank, status, value = results.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                for rank, proc in enumerate(procs):  # died without reporting (e.g. os._exit)
                    if rank not in collected and proc.exitcode is not None:
                        collected[rank] = ("error", f"exited with code {proc.exitcode} "
                                                    "without a result")
                continue
            collected[rank] = (status, value)
    finally:
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
    errors = {r: v for r, (s, v) in collected.items() if s == "error"}
    if errors and not allow_errors:
        raise AssertionError("\n".join(f"rank {r} failed:\n{v}" for r, v in sorted(errors.items())))
    return [collected[r][1] for r in range(world_size)]


_finished_worlds: dict[tuple, list] = {}


def cached_world(world_size: int, fn, timeout_s: float = 90.0) -> list:
    """run_world once per (function, world size): parametrised tests read the same run."""
    key = (fn.__module__, fn.__name__, world_size)
    if key not in _finished_worlds:
        _finished_worlds[key] = run_world(world_size, fn, timeout_s=timeout_s)
    return _finished_worlds[key]


def make(shape, tokens: int, seed: int, count: int = 1) -> list:
    """The same random tensors on every rank; "T" in `shape` stands for `tokens`."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    size = [tokens if s == "T" else s for s in shape]
    return [torch.randn(size, generator=gen) for _ in range(count)]


def check(failures: dict, op: str, case: str, fn) -> None:
    """Run one assertion inside a rank; record its failure for the parent to assert, per op."""
    try:
        fn()
    except Exception as exc:  # recorded and asserted in the parent, per operation
        failures[op].append(f"{case}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")


def assert_op_passed(world_size: int, fn, op: str) -> None:
    """Fail with every rank's recorded failures of `op` in the cached run of `fn`."""
    failures = [f"rank {rank}: {text}" for rank, per_op in enumerate(cached_world(world_size, fn))
                for text in per_op[op]]
    assert not failures, "\n".join(failures)
