"""The coordinator's end of each rank's control connection (runtime/control.py).

`accept_rank` runs the handshake on a new connection: a challenge, the rank's hello (its rank,
world size, plan sha, device and proof of the cluster token), the check, and the coordinator's
own proof over the rank's nonce, or a refusal that names the rank and the reason. A
`RankLink` then reads every frame the rank sends on a thread of its own, hands them to the
coordinator, and remembers when it last heard from the rank; the coordinator's heartbeat
thread sends heartbeats and declares a link dead when it has been silent for too long.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, Mapping

from galaxy.runtime import auth, control

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 30.0


class Refused(Exception):
    """A connection failed the handshake; the message names the rank and the reason."""


class RankLink:
    """One connected rank process, known by its device name."""

    def __init__(self, channel: control.Channel, device: str, plan_sha: str, on_message: Callable,
                 on_lost: Callable):
        self.channel, self.device, self.plan_sha = channel, device, plan_sha
        self.rank: int | None = None  # in the plan in force, once joined
        self.last_heard = time.monotonic()
        self.lost_reason: str | None = None
        self._on_message, self._on_lost = on_message, on_lost
        self._reader = threading.Thread(target=self._read, name=f"galaxy-link-{device}", daemon=True)

    def start(self) -> None:
        self._reader.start()

    @property
    def alive(self) -> bool:
        return self.lost_reason is None

    def send(self, kind: str, header: dict | None = None, tensors=None, timeout_s: float = 10.0) -> None:
        """Send a control word; a link that cannot take it is lost (and ControlError raised)."""
        try:
            self.channel.send(kind, header, tensors, timeout_s=timeout_s)
        except control.ControlError as exc:
            self.lose(f"cannot send to it ({exc})")
            raise

    def lose(self, reason: str) -> None:
        """Mark the link lost (once) and close it; the coordinator hears of it."""
        if self.lost_reason is not None:
            return
        self.lost_reason = reason
        self.channel.close()
        self._on_lost(self, reason)

    def close(self) -> None:
        self.lost_reason = self.lost_reason or "closed by the coordinator"
        self.channel.close()

    def _read(self) -> None:
        while self.alive:
            try:
                message = self.channel.receive(timeout_s=None)
            except control.ControlError as exc:
                self.lose(f"its control connection broke ({exc})")
                return
            self.last_heard = time.monotonic()
            if message.kind != control.HEARTBEAT:
                self._on_message(self, message)


def accept_rank(sock: socket.socket, address: str, token: bytes, plans: Mapping[str, tuple[str, ...]],
                current: str, settings: dict) -> tuple[control.Channel, dict]:
    """Run the handshake on an accepted connection; returns (channel, the rank's hello).

    `plans` maps the sha of each plan a rank may run (the one in force, `current`, and those
    served before) to its devices. Raises Refused (after telling the rank why) for a wrong
    token, an unknown plan or a rank outside its plan; ControlError if the connection breaks
    or stays silent.
    """
    channel = control.Channel(sock, f"the rank connecting from {address}")
    nonce = auth.new_nonce()
    channel.send(control.CHALLENGE, {"nonce": nonce}, timeout_s=HANDSHAKE_TIMEOUT_S)
    hello = channel.receive(timeout_s=HANDSHAKE_TIMEOUT_S)
    if hello.kind != control.HELLO:
        raise Refused(f"a connection from {address} opened with {hello.kind!r} instead of hello")
    info = hello.header
    rank, world_size = int(info.get("rank", -1)), int(info.get("world_size", -1))
    who = f"rank {rank} ({info.get('device')}, from {address})"
    plan_sha = info.get("plan", "") if info.get("plan", "") in plans else current
    devices = plans[plan_sha]
    ok = auth.is_valid(token, info.get("proof", ""), "rank", nonce, rank, world_size, info.get("plan", ""))
    reason = auth.refusal(who, info.get("plan", ""), world_size, plan_sha, len(devices), ok)
    if reason is None and not (0 <= rank < len(devices) and devices[rank] == info.get("device")):
        reason = f"{who} is not a device of this plan (its devices are {list(devices)})"
    if reason:
        try:
            channel.send(control.REFUSED, {"reason": reason}, timeout_s=5)
        except control.ControlError:
            pass
        channel.close()
        raise Refused(reason)
    channel.send(control.WELCOME, {
        **settings, "proof": auth.proof(token, "coordinator", info["nonce"], rank, world_size, plan_sha)},
        timeout_s=HANDSHAKE_TIMEOUT_S)
    channel.peer = f"rank {rank} ({info['device']})"
    return channel, info
