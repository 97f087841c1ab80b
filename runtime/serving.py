"""Persistent ranks: `python rank_<k>.py --serve HOST:PORT` serves requests until told to stop.

The rank connects to the coordinator of `galaxy-serve` at HOST:PORT over the control channel
(runtime/control.py), proves it holds the cluster token and runs the plan the coordinator
serves, then follows control words:

    join  {epoch, bundle_dir, rank, master, nonce}   load that bundle's module and weights if
          they are not the ones in memory, answer `loaded` (rank 0: with the port of its new
          store), wait for `go`, join a fresh gloo group (store prefix = the epoch), say `joined`
          [+ files, rebuild] + pieces                a re-planned bundle: write its small files
          if they are not on this device, import its module, and build its weights from the
          shard in memory, peers' pieces and the coordinator's (runtime/reshard.py) once the
          group stands
    run   {epoch, id} + inputs                       one request (several may follow at once); for a
                                                     generation bundle, a prompt and its sampling
                                                     settings (runtime/generate.py request_tensors)
    end   {epoch}                                    no more queued: finish what is started
    abort {epoch}                                    that group lost a device: shut its
          connections now (taken by the reader thread, whatever the main thread is doing), so
          a wait on a peer whose link is down fails at once instead of at its timeout
    stop                                             leave the group and exit 0

Between requests a rank waits on the control channel, never inside gloo, so no collective
timeout fires while it is idle. A heartbeat thread sends `heartbeat` every interval and a
reader thread takes every frame as it comes; if nothing arrives from the coordinator for
`dead_after_s`, or its connection closes, the rank exits at once (exit 4): a rank never
outlives the coordinator that started it. A request that fails on this rank (a peer died, a
collective timed out, a bug) is reported as `failed` and the rank leaves the gloo group at
once, so its peers fail fast instead of waiting for their timeout; it then waits for the next
`join`.

Weights are loaded once per plan: a `join` with the bundle already in memory only re-forms the
gloo group. A `join` with another bundle (already on this device) imports that bundle's rank
module under a fresh name, drops the old weights and loads the new ones. Its runtime must be
the one running (same files), since a process cannot unload the modules it imported.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import auth, bundle, control, generate, rendezvous, reshard
from .blocks import BlockClock
from .context import make_context
from .errors import BundleIntegrityError, CollectiveError, GalaxyRuntimeError, UsageError
from .p2p import take_sent_bytes
from .stream import sequential

log = logging.getLogger(__name__)

EXIT_COORDINATOR_LOST = 4
_CONNECT_RETRY_S = 0.2


@dataclass
class LoadedPlan:
    """One bundle's rank module and weights, in memory."""

    bundle_dir: Path
    rank: int
    plan: dict
    plan_sha: str
    forward: Callable
    stream: Callable | None
    weights: dict
    generation: generate.GenerationRank | None = None  # a generation bundle's programs and caches

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(self.plan["plan"]["devices"])

    @property
    def world_size(self) -> int:
        return len(self.devices)


def load_rank(bundle_dir: Path, rank: int, clock: BlockClock, module=None) -> LoadedPlan:
    """Verify this rank's files, import its module (unless given), time its blocks, load its weights."""
    bundle_dir = Path(bundle_dir).resolve()
    bundle.verify_manifest(bundle_dir, [bundle.rank_weights(rank)])
    loaded = load_rank_code(bundle_dir, rank, clock, module)
    loaded.weights = bundle.load_tensors(bundle_dir / bundle.rank_weights(rank))
    log.info("rank %d (%s): %d weight tensors from %s", rank, loaded.devices[rank], len(loaded.weights), bundle_dir)
    return loaded


def load_rank_code(bundle_dir: Path, rank: int, clock: BlockClock, module=None) -> LoadedPlan:
    """This rank's module (imported unless given, its blocks timed) and plan, checked against the
    manifest; no weights yet (a re-planned bundle's are rebuilt from pieces)."""
    bundle_dir = Path(bundle_dir).resolve()
    code = [name for name in bundle.rank_files(bundle_dir, rank) if name != bundle.rank_weights(rank)]
    bundle.verify_manifest(bundle_dir, code)
    plan = bundle.load_plan(bundle_dir)
    if module is None:
        module = _import_rank_module(bundle_dir, rank)
    clock.instrument(module)
    return LoadedPlan(bundle_dir, rank, plan, auth.plan_digest(bundle_dir), module.forward,
                      getattr(module, "stream", None), {})


def write_files(bundle_dir: Path, files: dict[str, str]) -> None:
    """Put a re-planned bundle's small files (plan.json, manifest.json, this rank's module) into
    `bundle_dir` on this device, with this rank's runtime beside them (the same files, as the
    manifest requires). Files already there with the same text are left alone."""
    bundle_dir = Path(bundle_dir)
    for name, text in files.items():
        path = (bundle_dir / name).resolve()
        if bundle_dir.resolve() not in path.parents:
            raise UsageError(f"the coordinator sent a file {name!r} outside the bundle folder {bundle_dir}")
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    runtime = bundle_dir / bundle.RUNTIME_DIR
    if not runtime.is_dir():
        shutil.copytree(Path(__file__).resolve().parent, runtime, ignore=shutil.ignore_patterns("__pycache__"))


def _import_rank_module(bundle_dir: Path, rank: int):
    _check_same_runtime(bundle_dir)
    return bundle.import_module_file(bundle_dir / bundle.rank_module(rank), f"rank_{rank}")


def _check_same_runtime(bundle_dir: Path) -> None:
    ours = Path(__file__).resolve().parent
    listed = {name.split("/", 1)[1]: sha for name, sha in bundle.read_manifest(bundle_dir).items()
              if name.startswith(bundle.RUNTIME_DIR + "/")}
    differ = sorted(name for name, sha in listed.items()
                    if not (ours / name).is_file() or bundle.sha256_file(ours / name) != sha)
    if differ:
        raise UsageError(f"the bundle at {bundle_dir} ships another runtime than the one this rank runs "
                         f"({', '.join(differ[:3])} differ); restart the rank from that bundle")


def serve(rank: int, module, address: str, token_file: str | None, timeout_s: float,
          connect_timeout_s: float) -> int:
    """The rank's serving life; returns its exit code (raises GalaxyRuntimeError before it serves)."""
    token = auth.load_token(token_file)
    clock = BlockClock()
    plan = load_rank(Path(module.__file__).parent, rank, clock, module)
    channel = _connect(address, connect_timeout_s, f"rank {rank} ({plan.devices[rank]})")
    settings = _handshake(channel, token, plan)
    session = _Session(channel, settings["heartbeat_s"], settings["dead_after_s"], plan.devices[rank])
    session.start()
    try:
        return _Rank(session, token, plan, clock, timeout_s).loop()
    finally:
        rendezvous.close()
        session.close()


def _connect(address: str, timeout_s: float, me: str) -> control.Channel:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--serve {address!r} is not HOST:PORT (the coordinator's control address)")
    deadline = time.monotonic() + timeout_s
    while True:  # the coordinator may still be starting
        try:
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.1, deadline - time.monotonic()))
            return control.Channel(sock, f"the coordinator at {address}")
        except OSError as exc:
            if time.monotonic() + _CONNECT_RETRY_S > deadline:
                raise control.ControlError(
                    f"{me} could not reach the coordinator at {address} within {timeout_s:g} s ({exc}); "
                    "is galaxy-serve running, and is that its control address?") from exc
            time.sleep(_CONNECT_RETRY_S)


def _handshake(channel: control.Channel, token: bytes, plan: LoadedPlan) -> dict:
    """Answer the coordinator's challenge; check its proof. Returns its heartbeat settings."""
    me = f"rank {plan.rank} ({plan.devices[plan.rank]})"
    challenge = channel.receive(timeout_s=30)
    if challenge.kind != control.CHALLENGE:
        raise control.ControlError(f"{channel.peer} opened with {challenge.kind!r}, not a challenge")
    nonce = auth.new_nonce()
    channel.send(control.HELLO, {
        "rank": plan.rank, "world_size": plan.world_size, "plan": plan.plan_sha,
        "device": plan.devices[plan.rank], "nonce": nonce,
        "proof": auth.proof(token, "rank", challenge.header["nonce"], plan.rank, plan.world_size, plan.plan_sha)})
    answer = channel.receive(timeout_s=30)
    if answer.kind == control.REFUSED:
        raise auth.AuthenticationError(f"the coordinator refused {me}: {answer.header.get('reason')}", plan.rank)
    if answer.kind != control.WELCOME or not auth.is_valid(
            token, answer.header.get("proof", ""), "coordinator", nonce, plan.rank, plan.world_size, plan.plan_sha):
        raise auth.AuthenticationError(
            f"{me}: {channel.peer} failed the cluster token check (it does not hold this cluster's token); "
            f"check the address and give every device the same {auth.TOKEN_ENV}", plan.rank)
    log.info("%s: welcomed by %s", me, channel.peer)
    return answer.header


class _Session:
    """The control connection's two threads: a reader that queues frames and watches the
    coordinator's heartbeats, and a heartbeat sender."""

    def __init__(self, channel: control.Channel, heartbeat_s: float, dead_after_s: float, device: str):
        self.channel, self.heartbeat_s, self.dead_after_s = channel, heartbeat_s, dead_after_s
        self.device = device
        self.on_abort: Callable[[int], None] = lambda epoch: None  # runs on the reader thread
        self.inbox: queue.Queue = queue.Queue()
        self._pushed_back: list[control.Message] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._read, name="galaxy-control-reader", daemon=True).start()
        threading.Thread(target=self._beat, name="galaxy-heartbeat", daemon=True).start()

    def next(self) -> control.Message:
        """The next control word (heartbeats are consumed by the reader). Waits as long as the
        coordinator is alive: the reader ends the process when it is not."""
        if self._pushed_back:
            return self._pushed_back.pop()
        while True:
            try:
                return self.inbox.get(timeout=self.dead_after_s)
            except queue.Empty:
                continue

    def push_back(self, message: control.Message) -> None:
        """`next()` returns this message first (a word read ahead by an inner loop)."""
        self._pushed_back.append(message)

    def send(self, kind: str, header: dict | None = None, tensors=None) -> None:
        self.channel.send(kind, header, tensors, timeout_s=self.dead_after_s)

    def close(self) -> None:
        self._stopping.set()
        self.channel.close()

    def _read(self) -> None:
        while not self._stopping.is_set():
            try:
                message = self.channel.receive(timeout_s=self.dead_after_s)
            except control.ControlError as exc:
                if not self._stopping.is_set():
                    self._lost(f"{exc} (no heartbeat within {self.dead_after_s:g} s, or closed)")
                return
            if message.kind == control.HEARTBEAT:
                continue
            if message.kind == control.ABORT:
                self.on_abort(int(message.header.get("epoch", -1)))
                continue
            self.inbox.put(message)
            if message.kind == control.STOP:
                return

    def _beat(self) -> None:
        while not self._stopping.wait(self.heartbeat_s):
            try:
                self.send(control.HEARTBEAT)
            except control.ControlError as exc:
                if not self._stopping.is_set():
                    self._lost(str(exc))
                return

    def _lost(self, why: str) -> None:
        """A rank without its coordinator can answer nobody: leave now, whatever it is doing."""
        sys.stderr.write(f"galaxy rank on {self.device}: error: lost the coordinator: {why}; exiting\n")
        sys.stderr.flush()
        os._exit(EXIT_COORDINATOR_LOST)


class _Rank:
    """The control loop: join groups, run requests, report results, failures and block times."""

    def __init__(self, session: _Session, token: bytes, plan: LoadedPlan, clock: BlockClock, timeout_s: float):
        self.session, self.token, self.clock, self.timeout_s = session, token, clock, timeout_s
        self.plan: LoadedPlan | None = plan  # None after a bundle failed to load
        self.device, self.rank = plan.devices[plan.rank], plan.rank  # the device stays; its rank may change
        self.epoch: int | None = None  # of the gloo group this rank is in, None when in none
        self.group_epoch: int | None = None  # of the group it is in or joining (what `abort` names)
        self.ctx = None
        session.on_abort = self._abort

    @property
    def me(self) -> str:
        return f"rank {self.rank} ({self.device})"

    def loop(self) -> int:
        while True:
            message = self.session.next()
            if message.kind == control.STOP:
                log.info("%s: told to stop", self.me)
                return 0
            if message.kind == control.JOIN:
                self._join(message)
            elif message.kind == control.LEAVE:
                rendezvous.close()
                self.epoch, self.group_epoch, self.ctx = None, None, None
            elif message.kind in (control.RUN, control.END):
                if self.epoch is not None and message.header.get("epoch") == self.epoch and message.kind == control.RUN:
                    self._serve_stream(message)
                # else: a request of a group this rank has left; the coordinator already failed it
            else:
                log.warning("%s: ignoring an unexpected %r from the coordinator", self.me, message.kind)

    def _abort(self, epoch: int) -> None:
        """The coordinator gave up on the group of `epoch` (reader thread): break it if we are in it."""
        if self.group_epoch is not None and self.group_epoch <= epoch:
            count = rendezvous.abort_connections(keep={self.session.channel.sock.fileno()})
            log.warning("%s: the group of epoch %d lost a device: shut %d connection(s)", self.me, epoch, count)

    # --- joining a group -----------------------------------------------------------------------

    def _join(self, message: control.Message) -> None:
        header = message.header
        rendezvous.close()
        self.epoch, self.ctx = None, None
        epoch = self.group_epoch = header["epoch"]
        held = self.plan  # what this rank has in memory, kept until the new shard is built
        rebuild = header.get("rebuild")
        try:
            if rebuild is not None:
                self._check_holds(held, rebuild)
                if header.get("files"):
                    write_files(Path(header["bundle_dir"]), header["files"])
                self.rank = int(header["rank"])
                self.plan = load_rank_code(Path(header["bundle_dir"]), self.rank, self.clock)
            else:
                self._load(Path(header["bundle_dir"]), int(header["rank"]))
            listener = rendezvous.listen(header["master"], 0) if self.plan.rank == 0 else None
            self.session.send(control.LOADED, {
                "epoch": epoch, "rank": self.plan.rank, "world_size": self.plan.world_size,
                "plan": self.plan.plan_sha, "port": listener.getsockname()[1] if listener else None,
                "proof": auth.proof(self.token, "rank", header["nonce"], self.plan.rank, self.plan.world_size,
                                    self.plan.plan_sha)})
            go = self._await_go(epoch, listener)
            if go is None:
                self.plan = held if rebuild is not None else self.plan
                return
            rendezvous.connect(self.plan.rank, self.plan.world_size, header["master"], int(go.header["port"]),
                               self.timeout_s, self.plan.devices, token=self.token, plan_sha=self.plan.plan_sha,
                               listen_socket=listener, prefix=f"galaxy/epoch{epoch}")
            ctx = make_context(self.plan.rank, self.plan.plan, self.plan.bundle_dir, self.timeout_s)
            moved = None
            if rebuild is not None:
                self.plan.weights, moved = reshard.rebuild(rebuild, held.weights, message.tensors, ctx.world())
                held = None
        except Exception as exc:  # noqa: BLE001 - a bug in a rebuild is reported, the rank serves on
            rendezvous.close()
            if rebuild is not None and held is not None:
                self.plan = held  # still what this rank holds: the coordinator plans from it
            self._report_failure(epoch, None, exc)
            return
        self.epoch, self.ctx = epoch, ctx
        self.session.send(control.JOINED, {"epoch": epoch, "rank": self.plan.rank, "holds": self._holds(),
                                           **({"moved": moved} if moved else {})})
        log.info("%s: serving plan %s (epoch %d)%s", self.me, self.plan.plan_sha[:12], epoch,
                 f"; weights rebuilt: {_describe_moved(moved)}" if moved else "")

    def _holds(self) -> dict:
        return {"plan": self.plan.plan_sha, "rank": self.plan.rank} if self.plan else {}

    def _check_holds(self, held: LoadedPlan | None, rebuild: dict) -> None:
        assumed = rebuild.get("holds") or {}
        mine = {"plan": held.plan_sha, "rank": held.rank} if held and held.weights else {}
        if assumed and assumed != mine:
            raise BundleIntegrityError(
                "weights", f"the coordinator planned the rebuild from plan {assumed.get('plan', '')[:12]} rank "
                           f"{assumed.get('rank')}, but {self.me} holds {mine.get('plan', 'nothing')[:12]} rank "
                           f"{mine.get('rank')}")

    def _await_go(self, epoch: int, listener):
        message = self.session.next()
        if message.kind == control.GO and message.header.get("epoch") == epoch:
            return message
        if listener is not None:
            listener.close()
        self.session.push_back(message)  # a new join or a stop: the loop takes it
        return None

    def _load(self, bundle_dir: Path, rank: int) -> None:
        self.rank = rank
        if self.plan is not None and bundle_dir.resolve() == self.plan.bundle_dir and rank == self.plan.rank:
            return
        self.plan = None  # let the old weights go before the new ones load
        self.plan = load_rank(bundle_dir, rank, self.clock)

    # --- requests ------------------------------------------------------------------------------

    def _serve_stream(self, first: control.Message) -> None:
        """Run requests until `end`: rank 0 of a pipeline overlaps them (its `stream`)."""
        ids: collections.deque = collections.deque()
        taken: dict[int, float] = {}
        streamed: set[int] = set()  # requests whose tokens the coordinator wants as they are made
        epoch = self.epoch

        def requests() -> Iterator[dict]:
            message = first
            while True:
                if message.kind == control.RUN:
                    ids.append(message.header["id"])
                    taken[message.header["id"]] = time.perf_counter()
                    if message.header.get("stream"):
                        streamed.add(message.header["id"])
                    yield message.tensors
                elif message.kind == control.END:
                    return
                else:  # join or stop in the middle: end this stream, the loop takes it next
                    self.session.push_back(message)
                    return
                message = self.session.next()

        if generate.is_generation_bundle(self.plan.plan):  # each request is a prompt to generate from
            if self.plan.generation is None:  # its programs and caches, over the weights in memory
                module = sys.modules[self.plan.forward.__module__]
                self.plan.generation = generate.load_generation_rank(self.plan.rank, self.plan.plan,
                                                                     self.plan.bundle_dir, module, self.plan.weights)
            def send_token(index: int, token: int) -> None:  # the request in progress is the oldest taken
                if ids[0] in streamed:
                    self.session.send(control.TOKEN, {"epoch": epoch, "id": ids[0], "index": index, "token": token})
            stream = generate.serving_stream(self.plan.generation, send_token if self.plan.rank == 0 else None)
        else:
            stream = self.plan.stream if self.plan.stream is not None else sequential(self.plan.forward)
        request_id = None
        try:
            with torch.inference_mode():
                for outputs in stream(requests(), self.plan.weights, self.ctx):
                    request_id = ids.popleft()
                    streamed.discard(request_id)
                    self._answer(request_id, outputs, time.perf_counter() - taken.pop(request_id))
            self.ctx.handoff.flush()
        except Exception as exc:  # a peer, a timeout, or a bug in a block: all reported, none fatal
            rendezvous.close()  # peers fail fast instead of waiting for their timeout
            self.epoch = None
            self._report_failure(epoch, ids[0] if ids else request_id, exc)

    def _answer(self, request_id: int, outputs, wall_s: float) -> None:
        """Times first, so the coordinator knows rank 0's own time when the result arrives."""
        if self.plan.rank == 0 and (not isinstance(outputs, dict) or not outputs):
            raise GalaxyRuntimeError(f"forward returned {type(outputs).__name__} on rank 0, expected "
                                     "a dict of output tensors by name")
        blocks, waits = self.clock.take()
        self.session.send(control.TIMES, {"epoch": self.epoch, "id": request_id, "rank": self.plan.rank,
                                          "wall_s": wall_s, "blocks": blocks, "block_waits": waits,
                                          "sent_bytes": take_sent_bytes()})
        if self.plan.rank == 0:
            self.session.send(control.RESULT, {"epoch": self.epoch, "id": request_id}, outputs)

    def _report_failure(self, epoch, request_id, exc: BaseException) -> None:
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, GalaxyRuntimeError):
            log.exception("%s: request %s failed with a bug", self.me, request_id)
            message = f"{type(exc).__name__}: {message}"
        else:
            log.error("%s: %s", self.me, message)
        peer = exc.peer_rank if isinstance(exc, CollectiveError) else None
        self.session.send(control.FAILED, {"epoch": epoch, "id": request_id, "rank": self.rank,
                                           "error": message, "peer": peer})


def _describe_moved(moved: dict) -> str:
    mib = {k: moved.get(k, 0) / 2**20 for k in ("kept", "peer", "host", "sent")}
    return (f"kept {mib['kept']:.1f} MiB, received {mib['peer']:.1f} MiB from peers and {mib['host']:.1f} MiB "
            f"from the coordinator, sent {mib['sent']:.1f} MiB; exchange {moved.get('exchange_s', 0):.3f} s, "
            f"assemble {moved.get('assemble_s', 0):.3f} s, check {moved.get('check_s', 0):.3f} s")
