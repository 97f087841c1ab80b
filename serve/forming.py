"""Forming a plan's gloo group through the control channel: join, loaded, go, joined.

    former.form(bundle, epoch, switch=None) -> {device: its `joined` header}

1. `join` to every device of the plan, with its rank there and where the bundle lies on that
   device; `leave` to connected devices the plan does not use. A re-planned bundle (`switch`, from
   serve/recovery.py) also carries each device's rebuild recipe, the pieces the coordinator
   sends it, and, for devices that do not share this machine's files, the bundle's small files;
   the words go out in parallel, since a device lost may have to receive a large share.
2. Every rank answers `loaded` with its proof over the join's nonce and the plan's sha; a rank
   that loaded something else is refused by name.
3. `go` with rank 0's store port; every rank joins the group under the store prefix of the epoch
   (and rebuilds its weights, exchanging pieces with its peers), then answers `joined`.

The coordinator's reader threads fill `state(epoch)` with what the ranks answer; every wait has a
deadline and names the device it waited for. A device lost meanwhile ends the formation with
GroupLost, so the coordinator can re-plan without it.
"""
from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Callable

from galaxy.runtime import auth, bundle as layout, control

from .bundles import HostBundle, Placement
from .links import RankLink, RankLinks

_POLL_S = 0.25
_BLAME_GRACE_S = 1.0  # after a rank failed to join, how long to wait for a lost device to blame
_MIN_RATE_BYTES_PER_S = 1e6  # sending a join with pieces may take this long per byte at worst


class FormingFailed(Exception):
    """The group could not form; the message names the device and the reason."""


class GroupLost(FormingFailed):
    """A device of the plan was lost while its group formed."""

    def __init__(self, message: str, device: str):
        super().__init__(message)
        self.device = device


class GroupFormer:
    def __init__(self, links: RankLinks, placement: Placement, token: bytes, cond: threading.Condition,
                 who: Callable[[str, HostBundle], str], timeout_s: float, connect_timeout_s: float,
                 dead_after_s: float, closing: threading.Event, exit_status: Callable[[str], str | None]):
        self.links, self.placement, self.token, self._cond = links, placement, token, cond
        self._who, self.timeout_s, self.connect_timeout_s = who, timeout_s, connect_timeout_s
        self.dead_after_s, self._closing, self._exit_status = dead_after_s, closing, exit_status
        self._joining: dict = {}  # epoch -> {"loaded": {device: header}, "joined": {...}, "failed": [...]}

    def note(self, device: str, message: control.Message) -> bool:
        """Record a rank's answer about forming (under the lock); False if it is about something else."""
        header = message.header
        if message.kind not in (control.LOADED, control.JOINED) and not (
                message.kind == control.FAILED and header.get("id") is None):
            return False
        state = self._joining.setdefault(header.get("epoch"), {"loaded": {}, "joined": {}, "failed": []})
        if message.kind == control.FAILED:
            state["failed"].append((device, header.get("error")))
        else:
            state[message.kind][device] = header
        return True

    def form(self, bundle: HostBundle, epoch: int, switch=None, on_transfer: Callable[[], None] | None = None) -> dict:
        links = self.await_links(bundle)
        with self._cond:
            self._joining = {epoch: {"loaded": {}, "joined": {}, "failed": []}}
            others = self.links.live_except(bundle.devices)
        nonces = {device: auth.new_nonce() for device in bundle.devices}
        master = self.placement.addresses[bundle.devices[0]]
        joins = []
        for rank, device in enumerate(bundle.devices):
            links[device].rank = rank
            header = {"epoch": epoch, "bundle_dir": self.placement.bundle_path(device, bundle), "rank": rank,
                      "master": master, "nonce": nonces[device]}
            pieces = None
            if switch is not None:
                header["rebuild"] = switch.moves.recipes[device]
                pieces = switch.moves.host_pieces[device] or None
                if self.placement.folders is not None:
                    header["files"] = _small_files(bundle, rank)
            joins.append((links[device], header, pieces))
        self._send_all(joins, bundle)
        for link in others:
            self._send_or_fail(link, control.LEAVE, {}, bundle)
        if on_transfer is not None:
            on_transfer()
        loaded = self._await_epoch(epoch, bundle, "loaded", "load the plan and answer")
        for rank, device in enumerate(bundle.devices):
            header = loaded[device]
            ok = auth.is_valid(self.token, header.get("proof", ""), "rank", nonces[device], rank,
                               int(header.get("world_size", -1)), header.get("plan", ""))
            reason = auth.refusal(self._who(device, bundle), header.get("plan", ""), int(header.get("world_size", -1)),
                                  bundle.sha, len(bundle.devices), ok)
            if reason:
                with self._cond:
                    self.links.refused(reason)
                raise FormingFailed(f"refused {self._who(device, bundle)} for {bundle.describe()}: {reason}")
            links[device].plan_sha = header["plan"]
        port = loaded[bundle.devices[0]]["port"]
        for device in bundle.devices:
            self._send_or_fail(links[device], control.GO, {"epoch": epoch, "port": port}, bundle)
        return self._await_epoch(epoch, bundle, "joined", "join the gloo group")

    def await_links(self, bundle: HostBundle) -> dict[str, RankLink]:
        deadline = time.monotonic() + self.connect_timeout_s
        with self._cond:
            while True:
                missing = [d for d in bundle.devices if not self.links.alive(d)]
                if not missing:
                    return {d: self.links.get(d) for d in bundle.devices}
                if time.monotonic() > deadline or self._closing.is_set():
                    detail = "; ".join(f"{self._who(d, bundle)}: {self.why_absent(d)}" for d in missing)
                    refusals = self.links.refusals
                    refused = f" (refused: {'; '.join(refusals[-3:])})" if refusals else ""
                    raise FormingFailed(f"no rank connected for {detail} within {self.connect_timeout_s:g} s{refused}")
                self._cond.wait(_POLL_S)

    def why_absent(self, device: str) -> str:
        link = self.links.get(device)
        if link is not None:
            return f"lost ({link.lost_reason})"
        return self._exit_status(device) or "its process never connected (check its log, address and token)"

    def _send_all(self, joins: list, bundle: HostBundle) -> None:
        """The join words, in parallel (some carry pieces of weights)."""
        def send(job):
            link, header, pieces = job
            size = sum(t.numel() * t.element_size() for t in (pieces or {}).values())
            self._send_or_fail(link, control.JOIN, header, bundle, pieces,
                               timeout_s=self.dead_after_s + size / _MIN_RATE_BYTES_PER_S)
        with concurrent.futures.ThreadPoolExecutor(max(1, len(joins))) as pool:
            for future in [pool.submit(send, job) for job in joins]:
                future.result()

    def _await_epoch(self, epoch: int, bundle: HostBundle, stage: str, doing: str) -> dict:
        deadline = time.monotonic() + self.timeout_s + self.connect_timeout_s
        with self._cond:
            while True:
                state = self._joining.get(epoch, {})
                lost = [d for d in bundle.devices if not self.links.alive(d)]
                if lost:
                    raise GroupLost(f"{self._who(lost[0], bundle)} lost while forming the group: "
                                    f"{self.links.get(lost[0]).lost_reason}", lost[0])
                if state.get("failed"):
                    self._blame_grace(bundle)
                    device, error = state["failed"][0]
                    raise FormingFailed(f"{self._who(device, bundle)} could not {doing}: {error}")
                done = state.get(stage, {})
                if all(d in done for d in bundle.devices):
                    return done
                if time.monotonic() > deadline or self._closing.is_set():
                    late = [self._who(d, bundle) for d in bundle.devices if d not in done]
                    raise FormingFailed(f"{', '.join(late)} did not {doing} within "
                                        f"{self.timeout_s + self.connect_timeout_s:g} s")
                self._cond.wait(_POLL_S)

    def _blame_grace(self, bundle: HostBundle) -> None:
        """A rank failed to join: if a device of the plan is lost within the grace, that is the
        cause (its peers' failures are the symptom). Under the lock."""
        end = time.monotonic() + _BLAME_GRACE_S
        while time.monotonic() < end:
            lost = [d for d in bundle.devices if not self.links.alive(d)]
            if lost:
                raise GroupLost(f"{self._who(lost[0], bundle)} lost while forming the group: "
                                f"{self.links.get(lost[0]).lost_reason}", lost[0])
            self._cond.wait(end - time.monotonic())

    def _send_or_fail(self, link: RankLink, kind: str, header: dict, bundle: HostBundle, tensors=None,
                      timeout_s: float | None = None) -> None:
        try:
            link.send(kind, header, tensors, timeout_s=timeout_s or self.dead_after_s)
        except control.ControlError as exc:
            raise GroupLost(f"cannot reach {self._who(link.device, bundle)}: {exc}", link.device) from exc


def _small_files(bundle: HostBundle, rank: int) -> dict[str, str]:
    """What a device that does not share this machine's files needs of a re-planned bundle, besides
    the runtime it runs and the weights it rebuilds."""
    names = (layout.PLAN, layout.MANIFEST, layout.rank_module(rank))
    return {name: (bundle.path / name).read_text() for name in names}
