"""The serving control channel: framed messages over one TCP connection per rank.

A message is a kind (a control word), a small JSON header and optional named tensors:

    frame = !II (header length, payload length) | header (UTF-8 JSON, "kind" inside) | payload

where the payload is a safetensors file in memory. The coordinator of `galaxy-serve` and each
rank keep one connection open; it does not depend on gloo, so a broken process group never
hides a rank from the coordinator. Both ends may send from two threads (a heartbeat thread and
the main one): `Channel.send` holds a lock per frame. Message kinds and their fields are listed
in docs/SERVING.md.
"""
from __future__ import annotations

import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Mapping

import torch

from .errors import GalaxyRuntimeError

_HEAD = struct.Struct("!II")
MAX_HEADER_BYTES = 1 << 20
MAX_PAYLOAD_BYTES = 1 << 31  # inputs and outputs of one request; a larger frame is garbage

# Control words, coordinator -> rank
CHALLENGE = "challenge"  # {nonce}: the first frame on a new connection
WELCOME = "welcome"  # {proof, heartbeat_s, dead_after_s}: the coordinator's answer to hello
REFUSED = "refused"  # {reason}: the connection is closed after it
JOIN = "join"  # {epoch, bundle_dir, rank, master, nonce}: load this plan (if new), then answer loaded
GO = "go"  # {epoch, port}: every rank of the plan loaded it; join the group at master:port
RUN = "run"  # {epoch, id, stream?} + inputs: one request (stream: rank 0 sends its tokens as made)
END = "end"  # {}: no request is queued; finish those started (pipelines drain)
LEAVE = "leave"  # {}: leave the group (the new plan runs without this device); wait for a join
ABORT = "abort"  # {epoch}: that group lost a device; shut its connections so no wait hangs on it
STOP = "stop"  # {}: leave the group and exit 0
# rank -> coordinator
HELLO = "hello"  # {rank, world_size, plan, device, nonce, proof}
LOADED = "loaded"  # {epoch, rank, world_size, plan, proof, port}: rank 0's port serves the store
JOINED = "joined"  # {epoch, rank, holds, moved?}: in the new group, ready for requests
RESULT = "result"  # {id} + outputs: rank 0's answer to one request
TOKEN = "token"  # {epoch, id, index, token}: a new token of a request run with "stream", as rank 0 makes it
TIMES = "times"  # {epoch, id, rank, wall_s, blocks {block: s}, block_waits {block: s}, sent_bytes}: per request
FAILED = "failed"  # {epoch, id, error, peer}: a request or a join failed on this rank
# both ways
HEARTBEAT = "heartbeat"  # {}


class ControlError(GalaxyRuntimeError):
    """The control connection broke, timed out or carried a malformed frame."""


@dataclass
class Message:
    kind: str
    header: dict = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Channel:
    """One end of a control connection. `peer` names the other end in error messages."""

    def __init__(self, sock: socket.socket, peer: str):
        self.sock, self.peer = sock, peer
        self._send_lock = threading.Lock()
        if sock.family in (socket.AF_INET, socket.AF_INET6):  # small frames go out at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, kind: str, header: Mapping | None = None,
             tensors: Mapping[str, torch.Tensor] | None = None, timeout_s: float | None = None) -> None:
        head = json.dumps({"kind": kind, **(header or {})}).encode()
        payload = _pack(tensors) if tensors else b""
        frame = _HEAD.pack(len(head), len(payload)) + head + payload
        with self._send_lock:
            try:
                self.sock.settimeout(timeout_s)
                self.sock.sendall(frame)
            except OSError as exc:
                raise ControlError(f"cannot send {kind!r} to {self.peer}: {exc}") from exc

    def receive(self, timeout_s: float | None = None) -> Message:
        """The next message; ControlError on EOF, a timeout or a malformed frame.

        Only one thread may receive on a channel.
        """
        self.sock.settimeout(timeout_s)
        head_len, payload_len = _HEAD.unpack(self._exactly(_HEAD.size))
        if head_len > MAX_HEADER_BYTES or payload_len > MAX_PAYLOAD_BYTES:
            raise ControlError(f"{self.peer} sent a frame of {head_len} + {payload_len} bytes: not a "
                               "Galaxy control connection")
        try:
            header = json.loads(self._exactly(head_len).decode())
            kind = header.pop("kind")
        except (ValueError, KeyError, AttributeError) as exc:
            raise ControlError(f"{self.peer} sent a malformed frame ({exc})") from exc
        tensors = _unpack(self._exactly(payload_len), self.peer) if payload_len else {}
        return Message(kind, header, tensors)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

    def _exactly(self, count: int) -> bytes:
        chunks, got = [], 0
        while got < count:
            try:
                chunk = self.sock.recv(min(count - got, 1 << 20))
            except socket.timeout as exc:
                raise ControlError(f"{self.peer} sent nothing within the timeout") from exc
            except OSError as exc:
                raise ControlError(f"lost the connection to {self.peer}: {exc}") from exc
            if not chunk:
                raise ControlError(f"{self.peer} closed the connection")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


def _pack(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    # clone: safetensors refuses tensors that share storage (a view of a bigger output)
    return save({name: t.detach().contiguous().clone() for name, t in tensors.items()})


def _unpack(payload: bytes, peer: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        return load(payload)
    except (SafetensorError, ValueError) as exc:
        raise ControlError(f"{peer} sent tensors that are not a safetensors file ({exc})") from exc
