"""Point-to-point transfers with a timeout on every wait, and errors that name the peer.

Everything the collectives send goes through `isend` / `irecv` here: they post an async
gloo send or receive and return a `Transfer` whose `wait()` gives up after the ring's
timeout (gloo's `Work.wait(timeout)` is honoured for send and receive) and raises
`CollectiveTimeout` naming the peer rank and device. gloo sends complete only once the
receiver has posted the matching receive, so callers post receives before waiting.

A wait that fails is a timeout when it lasted the whole timeout, and a failure of the peer (a
closed connection, a crash) when it ended sooner: the clock tells them apart, not the wording
of gloo's message, which changes between versions.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from . import linkdelay, timing
from .errors import CollectiveError, CollectiveTimeout
from .ring import Ring

_TIMED_OUT = 0.95  # a failed wait that lasted this fraction of the timeout is the timeout firing
_sent_bytes: collections.Counter = collections.Counter()  # peer rank -> bytes posted since take_sent_bytes()
_waited_s = [0.0]  # seconds spent in Transfer.wait since the process started


def waited_s() -> float:
    """Seconds this rank has spent waiting for transfers so far (a running total: callers take
    differences). A block's time minus its waits is the time its device was busy with it."""
    return _waited_s[0]


def take_sent_bytes() -> dict[int, int]:
    """Bytes this rank posted to each peer since the last call (the serving metrics' bytes per link)."""
    sent = dict(_sent_bytes)
    _sent_bytes.clear()
    return sent


@dataclass
class Transfer:
    """One posted send or receive; `wait()` returns its tensor once complete."""

    work: object  # torch.distributed Work
    tensor: torch.Tensor
    peer: int
    verb: str  # "send to" | "receive from"
    what: str  # which operation, for the error message
    ring: Ring

    def wait(self) -> torch.Tensor:
        started = time.monotonic()
        try:
            done = self.work.wait(timeout=timedelta(seconds=self.ring.timeout_s))
        except RuntimeError as exc:
            if time.monotonic() - started >= _TIMED_OUT * self.ring.timeout_s:
                raise _timeout(self.verb, self.peer, self.what, self.ring) from exc
            raise _translate(exc, self.verb, self.peer, self.what, self.ring) from exc
        finally:
            _waited_s[0] += time.monotonic() - started
        if done is False:  # some torch versions report a timeout by returning False
            raise _timeout(self.verb, self.peer, self.what, self.ring)
        if timing.ENABLED:
            timing.record_wait(time.monotonic() - started)
        return self.tensor


def isend(tensor: torch.Tensor, peer: int, ring: Ring, tag: int, what: str) -> Transfer:
    """Post an async send of `tensor` (must be contiguous) to global rank `peer`."""
    try:
        if linkdelay.active():  # under the emulator: the send leaves after the link's latency
            work = linkdelay.isend(tensor, peer, tag, _device(ring, peer))
        else:
            work = dist.isend(tensor, dst=peer, tag=tag)
    except RuntimeError as exc:
        raise _translate(exc, "send to", peer, what, ring) from exc
    _sent_bytes[peer] += tensor.numel() * tensor.element_size()
    return Transfer(work, tensor, peer, "send to", what, ring)


def irecv(tensor: torch.Tensor, peer: int, ring: Ring, tag: int, what: str) -> Transfer:
    """Post an async receive into `tensor` (must be contiguous) from global rank `peer`."""
    try:
        work = linkdelay.irecv(tensor, peer, tag) if linkdelay.active() else dist.irecv(tensor, src=peer, tag=tag)
    except RuntimeError as exc:
        raise _translate(exc, "receive from", peer, what, ring) from exc
    return Transfer(work, tensor, peer, "receive from", what, ring)


def _device(ring: Ring, rank: int) -> str:
    return ring.device_names[rank] if 0 <= rank < len(ring.device_names) else ""


def send(tensor: torch.Tensor, peer: int, ring: Ring, what: str, tag: int = 0) -> None:
    """Blocking send with the ring's timeout."""
    isend(tensor.contiguous(), peer, ring, tag, what).wait()


def recv(tensor: torch.Tensor, peer: int, ring: Ring, what: str, tag: int = 0) -> torch.Tensor:
    """Blocking receive into `tensor` with the ring's timeout."""
    return irecv(tensor, peer, ring, tag, what).wait()


def barrier(ring: Ring, what: str = "barrier") -> None:
    """All ranks of `ring` meet here; the first rank of the ring names any late rank.

    Every rank sends a token to the ring's first rank, which answers each once all arrived.
    """
    root = ring.ranks[0]
    token = torch.zeros(1)
    if ring.size == 1:
        return
    if ring.rank == root:
        pending = [irecv(torch.zeros(1), peer, ring, 0, what) for peer in ring.ranks[1:]]
        for transfer in pending:
            transfer.wait()
        answers = [isend(token, peer, ring, 0, what) for peer in ring.ranks[1:]]
        for transfer in answers:
            transfer.wait()
    else:
        send(token, root, ring, what)
        recv(torch.zeros(1), root, ring, what)


def _timeout(verb: str, peer: int, what: str, ring: Ring) -> CollectiveTimeout:
    return CollectiveTimeout(
        f"rank {ring.rank} timed out after {ring.timeout_s:g} s waiting to {verb} "
        f"{ring.describe(peer)} during {what}: that peer is slow, stuck or gone (check its log), "
        "or the link is too slow for the timeout (raise --timeout)", peer)


def _translate(exc: RuntimeError, verb: str, peer: int, what: str, ring: Ring) -> CollectiveError:
    text = str(exc)
    first_line = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return CollectiveError(
        f"rank {ring.rank} could not {verb} {ring.describe(peer)} during {what}: {first_line}; "
        "the peer probably crashed or lost its network (check its log)", peer)
