"""Two gloo ranks ping-pong tensors: a link's alpha and beta, and the CPU cost of moving bytes.

Protocol (rank 0 leads; both ranks run `probe` inside a 2-rank gloo group):

    config    rank 0 sends its LinkConfig (sizes, repeats, warmup) as an int64 tensor
    alpha     `small_repeats` round trips of one float32; alpha = median round trip / 2
    sizes     per size (1-8 MB): `warmup` + `repeats` round trips; per round trip the wall time and
              this process's CPU time (time.process_time: all its threads, gloo's included)
    beta      least-squares slope of median half round trip vs bytes over the sizes
    cpu       per rank: median over round trips of CPU seconds / (bytes sent + bytes received);
              rank 1 sends its figure and hostname to rank 0, which reports both

Every wait has a timeout (`Work.wait(timeout)`) and a failure names the peer and the step.
`run_local_pair` starts both ranks as subprocesses of this machine over loopback
(`python -m galaxy.compiler.profile.cli --link 127.0.0.1:PORT --rank r`).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from galaxy.compiler.errors import GalaxyError

log = logging.getLogger(__name__)

MB = 1 << 20
_CONFIG_LEN = 16
_HOST_BYTES = 64


class ProfileError(GalaxyError):
    """A measurement could not be made (peer unreachable, timeout, a probe process failed)."""


@dataclass(frozen=True)
class LinkConfig:
    sizes_bytes: tuple[int, ...]
    repeats: int
    warmup: int
    small_repeats: int

    def to_tensor(self) -> torch.Tensor:
        values = [len(self.sizes_bytes), self.repeats, self.warmup, self.small_repeats, *self.sizes_bytes]
        return torch.tensor(values + [0] * (_CONFIG_LEN - len(values)), dtype=torch.int64)

    @staticmethod
    def from_tensor(t: torch.Tensor) -> "LinkConfig":
        n, repeats, warmup, small = (int(v) for v in t[:4])
        return LinkConfig(tuple(int(v) for v in t[4:4 + n]), repeats, warmup, small)


FULL = LinkConfig(sizes_bytes=(1 * MB, 2 * MB, 4 * MB, 8 * MB), repeats=9, warmup=2, small_repeats=100)
QUICK = LinkConfig(sizes_bytes=(1 * MB, 2 * MB), repeats=3, warmup=1, small_repeats=10)


@dataclass(frozen=True)
class LinkResult:
    config: LinkConfig
    alpha_s: float
    beta_s_per_byte: float
    half_rtt_s: tuple[float, ...]  # median per size, aligned with config.sizes_bytes
    comm_cpu_s_per_byte: tuple[float, float]  # rank 0, rank 1
    hosts: tuple[str, str]
    alpha_spread_s: tuple[float, float] = (0.0, 0.0)  # fastest and 90th-percentile small half round trip

    @property
    def bandwidth_bytes_per_s(self) -> float:
        return 1.0 / self.beta_s_per_byte

    def to_json(self) -> dict:
        return {"format_version": 1, "alpha_s": self.alpha_s, "beta_s_per_byte": self.beta_s_per_byte,
                "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
                "comm_cpu_s_per_byte": {"rank0": self.comm_cpu_s_per_byte[0],
                                        "rank1": self.comm_cpu_s_per_byte[1]},
                "hosts": list(self.hosts),
                "alpha_min_s": self.alpha_spread_s[0], "alpha_p90_s": self.alpha_spread_s[1],
                "half_round_trip_s": {str(b): t for b, t in zip(self.config.sizes_bytes, self.half_rtt_s)},
                "method": {"statistic": "median", "repeats": self.config.repeats, "warmup": self.config.warmup,
                           "small_message_repeats": self.config.small_repeats}}

    @staticmethod
    def from_json(data: dict) -> "LinkResult":
        sizes = tuple(int(b) for b in data["half_round_trip_s"])
        method = data["method"]
        config = LinkConfig(sizes, method["repeats"], method["warmup"], method["small_message_repeats"])
        cpu = data["comm_cpu_s_per_byte"]
        return LinkResult(config, data["alpha_s"], data["beta_s_per_byte"],
                          tuple(data["half_round_trip_s"][str(b)] for b in sizes),
                          (cpu["rank0"], cpu["rank1"]), tuple(data["hosts"]),
                          (data.get("alpha_min_s", 0.0), data.get("alpha_p90_s", 0.0)))


# --- inside the group --------------------------------------------------------------------------

class _Peer:
    """The other rank, with a timeout on every wait."""

    def __init__(self, rank: int, timeout_s: float):
        self.rank, self.peer, self.timeout = rank, 1 - rank, timedelta(seconds=timeout_s)

    def _wait(self, work, verb: str, what: str) -> None:
        try:
            done = work.wait(timeout=self.timeout)
        except RuntimeError as exc:
            raise ProfileError(f"rank {self.rank}: {verb} rank {self.peer} failed during {what}: "
                               f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}; "
                               "did the other end stop or time out?") from exc
        if done is False:
            raise ProfileError(f"rank {self.rank}: {verb} rank {self.peer} timed out after "
                               f"{self.timeout.total_seconds():g} s during {what}")

    def send(self, t: torch.Tensor, what: str) -> None:
        self._wait(dist.isend(t, dst=self.peer), "send to", what)

    def recv(self, t: torch.Tensor, what: str) -> torch.Tensor:
        self._wait(dist.irecv(t, src=self.peer), "receive from", what)
        return t

    def round_trip(self, t: torch.Tensor, what: str) -> None:
        """Rank 0 sends then receives; rank 1 receives then sends back."""
        if self.rank == 0:
            self.send(t, what)
            self.recv(t, what)
        else:
            self.recv(t, what)
            self.send(t, what)


def probe(rank: int, config: LinkConfig | None, timeout_s: float) -> LinkResult | None:
    """Run the protocol; rank 0 returns the LinkResult, rank 1 returns None."""
    peer = _Peer(rank, timeout_s)
    wire = config.to_tensor() if rank == 0 else torch.zeros(_CONFIG_LEN, dtype=torch.int64)
    if rank == 0:
        peer.send(wire, "the config")
    else:
        peer.recv(wire, "the config")
    config = LinkConfig.from_tensor(wire)

    small = torch.zeros(1)
    for _ in range(config.warmup):
        peer.round_trip(small, "the small-message warmup")
    small_halves = sorted(w / 2 for w in _timed_round_trips(peer, small, config.small_repeats, "small messages")[0])
    alpha = statistics.median(small_halves)
    spread = (small_halves[0], small_halves[min(len(small_halves) - 1, int(0.9 * len(small_halves)))])
    if alpha > 5 * spread[0]:
        log.warning("small round trips vary a lot (median %.3f ms, fastest %.3f ms): is either machine busy?",
                    alpha * 1e3, spread[0] * 1e3)
    half_rtts, cpu_per_byte = [], []
    for size in config.sizes_bytes:
        buffer = torch.zeros(size // 4)
        for _ in range(config.warmup):
            peer.round_trip(buffer, f"the {size} B warmup")
        walls, cpus = _timed_round_trips(peer, buffer, config.repeats, f"{size} B messages")
        half_rtts.append(statistics.median(walls) / 2)
        cpu_per_byte.append(statistics.median(c / (2 * size) for c in cpus))
        log.info("rank %d: %5.1f MB half round trip %8.3f ms, CPU %.2f ns/byte", rank, size / MB,
                 half_rtts[-1] * 1e3, cpu_per_byte[-1] * 1e9)
    own_cpu = statistics.median(cpu_per_byte)
    peer_info = torch.tensor([own_cpu], dtype=torch.float64)
    host = torch.zeros(_HOST_BYTES, dtype=torch.uint8)
    if rank == 1:
        peer.send(peer_info, "the CPU figure")
        peer.send(_encode(socket.gethostname(), host), "the hostname")
        return None
    peer.recv(peer_info, "the CPU figure")
    peer_host = bytes(peer.recv(host, "the hostname").tolist()).rstrip(b"\0").decode(errors="replace")
    return LinkResult(config, alpha, fit_beta(config.sizes_bytes, half_rtts, alpha), tuple(half_rtts),
                      (own_cpu, float(peer_info[0])), (socket.gethostname(), peer_host), spread)


def _timed_round_trips(peer: _Peer, t: torch.Tensor, n: int, what: str) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(n):
        wall, cpu = time.perf_counter(), time.process_time()
        peer.round_trip(t, what)
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return walls, cpus


def fit_beta(sizes: tuple[int, ...], half_rtts: list[float], alpha: float) -> float:
    """Seconds per byte: least-squares slope of half round trip vs bytes; if the sizes are too few
    or too noisy for a positive slope, the largest size's (time - alpha) / bytes."""
    if len(sizes) >= 2:
        mean_x, mean_y = statistics.fmean(sizes), statistics.fmean(half_rtts)
        num = sum((x - mean_x) * (y - mean_y) for x, y in zip(sizes, half_rtts))
        den = sum((x - mean_x) ** 2 for x in sizes)
        if num > 0:
            return num / den
        log.warning("half round trips do not grow with size (noisy link?); beta from the largest size")
    return max(half_rtts[-1] - alpha, half_rtts[-1] * 1e-3) / sizes[-1]


def _encode(text: str, out: torch.Tensor) -> torch.Tensor:
    raw = text.encode()[: out.numel()]
    out[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    return out


# --- one end, or both ends on this machine -----------------------------------------------------

def run_link_rank(master: str, rank: int, config: LinkConfig, timeout_s: float) -> LinkResult | None:
    """Join a 2-rank gloo group at master HOST:PORT (rank 0 serves it) and run the probe."""
    from galaxy.runtime import rendezvous
    from galaxy.runtime.errors import GalaxyRuntimeError

    host, _, port = master.rpartition(":")
    if not host or not port.isdigit():
        raise ProfileError(f"--link {master!r}: expected HOST:PORT, e.g. 192.168.1.20:29600")
    if rank not in (0, 1):
        raise ProfileError(f"--rank {rank}: a link probe has ranks 0 and 1")
    try:
        rendezvous.connect(rank, 2, host, int(port), timeout_s)
        log.info("rank %d: connected to %s, probing", rank, master)
        return probe(rank, config, timeout_s)
    except GalaxyRuntimeError as exc:
        raise ProfileError(f"link probe rank {rank}: {exc}") from exc
    finally:
        rendezvous.close()


def run_local_pair(config: LinkConfig, timeout_s: float = 60.0) -> LinkResult:
    """Both ranks as subprocesses on this machine over loopback, one torch thread each."""
    if config not in (QUICK, FULL):
        raise ValueError("run_local_pair runs the FULL or QUICK configuration")
    port = _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    with tempfile.TemporaryDirectory(prefix="galaxy-link-") as tmp:
        out = Path(tmp) / "link.json"
        procs, logs = [], [Path(tmp) / f"rank_{rank}.log" for rank in (0, 1)]
        for rank in (0, 1):
            cmd = [sys.executable, "-m", "galaxy.compiler.profile.cli", "--link", f"127.0.0.1:{port}",
                   "--rank", str(rank), "--timeout", f"{timeout_s:g}", "--threads", "1",
                   *(["--quick"] if config == QUICK else []), *(["-o", str(out)] if rank == 0 else [])]
            with logs[rank].open("w") as stderr:  # a file, not a pipe: a chatty rank never blocks
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=stderr))
        deadline = time.monotonic() + timeout_s + 30  # + interpreter and torch start-up
        try:
            for rank, proc in enumerate(procs):
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise ProfileError(f"the local link probe did not finish in {timeout_s + 30:g} s; "
                               f"rank {rank} was still running") from None
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        errors = []
        for rank, proc in enumerate(procs):
            text = logs[rank].read_text(errors="replace")
            if proc.returncode != 0:
                errors.append(f"rank {rank} exited with {proc.returncode}: {_last_line(text)}")
            for line in text.splitlines():  # pass the ranks' warnings on
                if line.startswith("WARNING"):
                    log.warning("local link probe rank %d: %s", rank, line.split(": ", 1)[-1])
        if errors:
            raise ProfileError("the local link probe failed: " + "; ".join(errors))
        return LinkResult.from_json(json.loads(out.read_text()))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
