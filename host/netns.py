"""Sockets inside another network namespace, from a process that stays in its own.

`galaxy-serve --emulate` answers HTTP on this machine's loopback while its coordinator talks
to ranks that live in emulated devices' namespaces: the coordinator's listening socket is
made on a short-lived thread that entered the emulated cluster's control namespace
(setns(2) moves only the calling thread). A socket keeps the namespace it was created in, so
every thread can use it afterwards.
"""
from __future__ import annotations

import ctypes
import os
import threading
from typing import Callable, TypeVar

from galaxy.runtime.errors import GalaxyRuntimeError

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_TIMEOUT_S = 10.0


def in_namespace(namespace: str, make: Callable[[], T], timeout_s: float = _TIMEOUT_S) -> T:
    """make() run on a thread inside network namespace `namespace` (ip netns's /run/netns/NAME);
    GalaxyRuntimeError if it takes longer than `timeout_s`."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            _enter(namespace)
        except OSError as exc:
            outcome["error"] = GalaxyRuntimeError(f"cannot enter network namespace {namespace}: {exc}")
            return
        try:
            outcome["value"] = make()
        except BaseException as exc:  # handed to the caller's thread as it is
            outcome["error"] = exc

    thread = threading.Thread(target=run, name=f"galaxy-netns-{namespace}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise GalaxyRuntimeError(f"work inside network namespace {namespace} took over {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def _enter(namespace: str) -> None:
    """Move the calling thread into the network namespace (setns(2) on /run/netns/NAME)."""
    fd = os.open(f"/run/netns/{namespace}", os.O_RDONLY)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    finally:
        os.close(fd)
