"""The coordinator's end of each rank's control connection (runtime/control.py).

`RankLinks` owns them all, by device: an accept thread hands each new connection to a handshake
thread (`accept_rank`: a challenge, the rank's hello with its rank, world size, plan sha, device
and proof of the cluster token, the check, and the coordinator's own proof over the rank's
nonce, or a refusal naming the rank and the reason); a heartbeat thread sends heartbeats and
declares a rank lost when it has been silent for `dead_after_s`. A `RankLink` reads every frame
its rank sends on a thread of its own and hands it to the coordinator.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Callable, Mapping

from galaxy.runtime import auth, control

log = logging.getLogger(__name__)

_CHECKS_PER_BEAT = 4

HANDSHAKE_TIMEOUT_S = 30.0
_POLL_S = 0.25


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


class RankLinks:
    """Every rank's link, by device name. Shares the coordinator's lock (`cond`): `plans()` is
    called under it and gives the plans a rank may run; `on_message` / `on_lost` are the
    coordinator's."""

    def __init__(self, listener: socket.socket, token: bytes, heartbeat_s: float, dead_after_s: float,
                 cond: threading.Condition, plans: Callable, on_message: Callable, on_lost: Callable, metrics):
        self.listener, self.token = listener, token
        self.heartbeat_s, self.dead_after_s = heartbeat_s, dead_after_s
        self._cond, self._plans, self._on_message, self._on_lost = cond, plans, on_message, on_lost
        self.metrics = metrics
        self._links: dict[str, RankLink] = {}
        self.refusals: list[str] = []
        self._closing = threading.Event()
        self._threads = [threading.Thread(target=self._accept, name="galaxy-accept", daemon=True),
                         threading.Thread(target=self._heartbeat, name="galaxy-heartbeat", daemon=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def get(self, device: str) -> RankLink | None:
        return self._links.get(device)

    def alive(self, device: str) -> bool:
        link = self._links.get(device)
        return link is not None and link.alive

    def live_except(self, devices: tuple[str, ...]) -> list[RankLink]:
        return [link for device, link in self._links.items() if device not in devices and link.alive]

    def refused(self, reason: str) -> None:
        """Record a refusal (under the lock)."""
        self.refusals.append(reason)
        self.metrics.refusals.inc()

    def close(self) -> None:
        """Tell every rank to stop and close every link and the listener (never raises)."""
        self._closing.set()
        with self._cond:
            links = list(self._links.values())
        for link in links:
            if link.alive:
                try:
                    link.send(control.STOP, timeout_s=2)
                except control.ControlError:
                    pass
            link.close()
        try:
            self.listener.close()
        except OSError:
            pass
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=5)

    def _accept(self) -> None:
        self.listener.settimeout(_POLL_S)
        while not self._closing.is_set():
            try:
                sock, address = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._handshake, args=(sock, address[0]), daemon=True,
                             name=f"galaxy-handshake-{address[0]}").start()

    def _handshake(self, sock: socket.socket, address: str) -> None:
        settings = {"heartbeat_s": self.heartbeat_s, "dead_after_s": self.dead_after_s}
        with self._cond:
            plans, current = self._plans()
        try:
            channel, hello = accept_rank(sock, address, self.token, plans, current, settings)
        except Refused as exc:
            log.warning("galaxy-serve: refused a rank: %s", exc)
            with self._cond:
                self.refused(str(exc))
                self._cond.notify_all()
            return
        except (control.ControlError, OSError, ValueError) as exc:
            log.warning("galaxy-serve: a connection from %s broke during the handshake: %s", address, exc)
            sock.close()
            return
        device = hello["device"]
        with self._cond:
            if self.alive(device):
                log.warning("galaxy-serve: refused a second rank for %s from %s", device, address)
                channel.close()
                return
            link = RankLink(channel, device, hello["plan"], self._on_message, self._on_lost)
            self._links[device] = link
            self._cond.notify_all()
        link.start()
        log.info("galaxy-serve: rank %s (%s) connected from %s", hello["rank"], device, address)

    def _heartbeat(self) -> None:
        """Send a heartbeat every interval; look for silent ranks every quarter interval, so a rank
        is lost at most a quarter interval after `dead_after_s` of silence (not a whole one)."""
        sent = time.monotonic()
        while not self._closing.wait(self.heartbeat_s / _CHECKS_PER_BEAT):
            with self._cond:
                links = [link for link in self._links.values() if link.alive]
            now = time.monotonic()
            beat = now - sent >= self.heartbeat_s * (1 - 0.5 / _CHECKS_PER_BEAT)
            sent = now if beat else sent
            for link in links:
                silent = now - link.last_heard
                if silent > self.dead_after_s:
                    link.lose(f"no heartbeat for {silent:.1f} s (hung, or its network is down)")
                    continue
                try:
                    if beat:
                        link.send(control.HEARTBEAT, timeout_s=self.dead_after_s)
                except control.ControlError:
                    pass  # already lost by send
