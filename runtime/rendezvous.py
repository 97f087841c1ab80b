"""Join the process group: a TCPStore rendezvous with deadlines, then gloo.

Rank 0 serves a `torch.distributed.TCPStore`; every rank registers under
`galaxy/joined/<rank>`. Rank 0 waits until all ranks joined or the deadline passes, then
posts `galaxy/go` or `galaxy/abort` (with the names of the missing ranks). The other ranks
wait for that verdict, so every process fails with the same clear message. Only then does
`dist.init_process_group("gloo", store=...)` run, with the same timeout.

Under torchrun (TORCHELASTIC_USE_AGENT_STORE=True) the agent already serves a store at
MASTER_ADDR:MASTER_PORT, so every rank, rank 0 included, joins it as a client.

gloo picks its network interface from the environment variable GLOO_SOCKET_IFNAME (read by
torch itself); inside network namespaces it must be set or the connection hangs. We only
check that the interfaces it names exist.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from datetime import timedelta
from typing import Sequence

import torch.distributed as dist

from .errors import RendezvousError, RendezvousTimeout

log = logging.getLogger(__name__)

_POLL_S = 0.05
_VERDICT_GRACE_S = 3.0  # how long past its own deadline a rank waits for rank 0's verdict
_store: dist.Store | None = None  # kept alive while the group lives (rank 0 serves it)


def connect(rank: int, world_size: int, master_addr: str, master_port: int, timeout_s: float,
            device_names: Sequence[str] | None = None) -> None:
    """Join the gloo group of `world_size` ranks served by rank 0 at master_addr:master_port.

    Raises RendezvousTimeout naming the ranks (and devices) that did not join in time, or
    that this rank could not reach the master.
    """
    global _store
    names = list(device_names or [])

    def who(r: int) -> str:
        return f"rank {r} ({names[r]})" if r < len(names) and names[r] else f"rank {r}"

    if not 0 <= rank < world_size:
        raise RendezvousError(f"rank {rank} is outside the world of {world_size} ranks")
    _check_socket_ifname()
    deadline = time.monotonic() + timeout_s
    store = _open_store(rank, world_size, master_addr, master_port, timeout_s, who)
    log.info("%s joined the rendezvous at %s:%d (world size %d)", who(rank), master_addr,
             master_port, world_size)
    store.set(f"galaxy/joined/{rank}", names[rank] if rank < len(names) else "")
    if rank == 0:
        store.set("galaxy/world_size", str(world_size))
        missing = _wait_for_ranks(store, world_size, deadline)
        if missing:
            message = _missing_message(missing, who, timeout_s, master_addr, master_port)
            store.set("galaxy/abort", message)
            time.sleep(5 * _POLL_S)  # let the others read the verdict before the server goes
            raise RendezvousTimeout(message, missing)
        store.set("galaxy/go", "1")
    else:
        _wait_for_verdict(store, rank, world_size, deadline + _VERDICT_GRACE_S, who, timeout_s,
                          master_addr, master_port)
    try:
        dist.init_process_group("gloo", store=dist.PrefixStore("galaxy/pg", store), rank=rank,
                                world_size=world_size, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as exc:
        raise RendezvousTimeout(
            f"{who(rank)}: gloo could not connect to every peer within {timeout_s:g} s "
            f"({_first_line(exc)}); check that all devices reach each other (firewall, "
            "GLOO_SOCKET_IFNAME) and that none has crashed") from exc
    _store = store
    log.info("%s: gloo process group ready", who(rank))


def close() -> None:
    """Leave the process group (idempotent)."""
    global _store
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _store = None


def _open_store(rank, world_size, master_addr, master_port, timeout_s, who) -> dist.Store:
    serve = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"
    try:
        store = dist.TCPStore(master_addr, master_port, world_size, serve,
                              timeout=timedelta(seconds=timeout_s), wait_for_workers=False)
    except (RuntimeError, ValueError, OSError) as exc:
        if serve:
            raise RendezvousError(
                f"rank 0 could not serve the rendezvous on port {master_port} ({_first_line(exc)}); "
                "is the port in use by another run? pick another --master port") from exc
        raise RendezvousTimeout(
            f"{who(rank)} could not reach the master ({who(0)}) at {master_addr}:{master_port} "
            f"within {timeout_s:g} s ({_first_line(exc)}); check that rank 0 is started, the "
            "address and port are right and no firewall blocks the port", [0]) from exc
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # fresh keys after a restart
    return dist.PrefixStore(f"galaxy/{attempt}", store)


def _joined(store: dist.Store, world_size: int) -> list[bool]:
    return [store.check([f"galaxy/joined/{r}"]) for r in range(world_size)]


def _wait_for_ranks(store: dist.Store, world_size: int, deadline: float) -> list[int]:
    keys = [f"galaxy/joined/{r}" for r in range(world_size)]
    while not store.check(keys):
        if time.monotonic() > deadline:
            return [r for r, ok in enumerate(_joined(store, world_size)) if not ok]
        time.sleep(_POLL_S)
    return []


def _wait_for_verdict(store, rank, world_size, deadline, who, timeout_s, master_addr, master_port):
    try:
        while True:
            if store.check(["galaxy/abort"]):
                raise RendezvousTimeout(store.get("galaxy/abort").decode(),
                                        _missing_now(store, world_size))
            if store.check(["galaxy/go"]):
                break
            if time.monotonic() > deadline:
                missing = _missing_now(store, world_size)
                raise RendezvousTimeout(
                    _missing_message(missing, who, timeout_s, master_addr, master_port), missing)
            time.sleep(_POLL_S)
        size = int(store.get("galaxy/world_size").decode())
    except (RuntimeError, OSError) as exc:  # the master went away mid-rendezvous
        raise RendezvousTimeout(
            f"{who(rank)} lost the master ({who(0)}) at {master_addr}:{master_port} during the "
            f"rendezvous ({_first_line(exc)}); see rank 0's log", [0]) from exc
    if size != world_size:
        raise RendezvousError(f"{who(rank)} expects {world_size} ranks but rank 0 expects {size}; "
                              "all devices must run modules from the same bundle")


def _missing_now(store: dist.Store, world_size: int) -> list[int]:
    return [r for r, ok in enumerate(_joined(store, world_size)) if not ok]


def _missing_message(missing, who, timeout_s, master_addr, master_port) -> str:
    listed = ", ".join(who(r) for r in missing) or "none (rank 0 gave no verdict)"
    return (f"rendezvous timed out after {timeout_s:g} s; never joined: {listed}; check that "
            f"those devices were started with --master {master_addr}:{master_port}, can reach "
            "that address, and run the same bundle")


def _check_socket_ifname() -> None:
    wanted = os.environ.get("GLOO_SOCKET_IFNAME", "")
    if not wanted:
        return
    available = [name for _, name in socket.if_nameindex()]
    absent = [name for name in wanted.split(",") if name and name not in available]
    if absent:
        raise RendezvousError(f"GLOO_SOCKET_IFNAME={wanted} names {absent}, which this machine "
                              f"lacks (it has {available}); set it to the interface that reaches "
                              "the other devices, or unset it")
    log.info("gloo uses network interface(s) %s (GLOO_SOCKET_IFNAME)", wanted)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
