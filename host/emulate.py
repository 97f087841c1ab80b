"""The emulated edge cluster: one network namespace and one CPU cgroup per device.

    with EmulatedCluster(cpu_shares=[1.0, 0.5], bandwidth_bytes_per_s=12.5e6) as emu:
        run_ranks(bundle, Placement(emu.master_addr, emu.master_port, wrap_command=emu.wrap_command,
                                    rank_env=emu.rank_env))

(host/placement.py makes one from a bundle's own cluster.)

Layout of one run, named `gx<pid>-<n>` (n counts clusters made by this process):

    namespace gx<pid>-<n>-sw:  bridge br0, ports r0 .. r<N-1> (veth, MTU 60000)
    namespace gx<pid>-<n>-r<k>: lo, gxnet = 10.77.0.<k+1>/24, the peer of r<k>
                                egress qdisc: htb, one class per destination address
    namespace gx<pid>-<n>-ctl:  (control=True) gxnet = 10.77.0.254/24 on port c, unshaped: the
                                machine of the user, where galaxy-serve's coordinator and ssh run
    cgroup    <cpu root>/gx<pid>-<n>/r<k>: CPU weight = cpu_share (pinned), or quota
    cgroup    <cpu root>/gx<pid>-<n>/f<c>: a busy loop on CPU c, weight 1 - the share of its device

Nothing is created in the root network namespace, so the addresses never meet the host's
network and deleting the namespaces removes every link, bridge and qdisc. Interface names are
short fixed ones because each lives in a namespace of its own run. A rank joins its cgroup
before it enters its namespace (`ip netns exec` remounts /sys): `wrap_command` returns
`sh -c 'echo $$ > <cgroup>/cgroup.procs && exec ip netns exec <ns> argv...'`.

CPU (`cpu_mode`): by "weight", each rank is pinned to a CPU of its own with a CFS weight
equal to its share, next to a busy "filler" that takes the rest of that CPU. A device then
runs at its share all the time, and a thread woken by a message runs at once, as on a real
slow device. By "quota", every rank gets a CFS quota (share x 10 ms per 10 ms): exact on
average, but it throttles the whole process for the rest of a period, and a message that
arrives then waits, as on a device busy with other work (docs/EMULATION.md). "auto" (the
default) takes weights when every device can have a CPU of its own, else quotas. Weights
are never used for devices sharing a CPU: one that waits would lend its time to the others
there, and a slow device would look fast.

Links: traffic from rank i to rank j is shaped once, on i's egress, by an htb class at the
rate of the pair (i, j); latency uses a netem leaf when the kernel has netem, else each rank's
runtime delays its sends (rank_env sets GALAXY_LINK_LATENCY: runtime/linkdelay.py). Every
transfer of a pair gets the pair's full rate, as on a
switched network; a shared medium (one Wi-Fi channel) is not modelled. docs/EMULATION.md
has the calibration.
"""
from __future__ import annotations

import atexit
import itertools
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from galaxy.host.processes import die_with_parent
from galaxy.runtime import linkdelay
from galaxy.runtime.errors import GalaxyRuntimeError, UsageError

log = logging.getLogger(__name__)

SUBNET = "10.77.0"  # rank k is SUBNET.<k+1>/24, only inside namespaces this module creates
MTU = 60000  # stands in for NIC segmentation offload; per-packet cost at 1500 skews latency
CPU_PERIOD_US = 10_000  # longer periods make short GEMMs bursty (DESIGN.md)
MIN_CPU_QUOTA_US = 1_000  # the kernel's minimum
# htb's bucket: bytes a link may send at once after being idle. Kept tiny so a message after
# a pause is not faster than the rate (2 x MTU let 120 kB cross 100 Mbit/s in ~0.05 ms);
# packets larger than it still pass, as htb runs into debt. docs/EMULATION.md, calibration.
BURST_S, MIN_BURST_BYTES = 50e-6, 1600
# Socket buffers that hold a whole ring step, so a transfer runs in the kernel while the rank
# computes (TCP autotuning sizes them to the tiny bandwidth-delay product of a LAN, and then
# every few KB wait for the rank's communication thread, which competes with its GEMM).
# Real devices want the same: docs/EMULATION.md.
SOCKET_BUFFERS = ("net.ipv4.tcp_wmem=4096 16777216 33554432", "net.ipv4.tcp_rmem=4096 16777216 33554432")
MASTER_PORT = 29500  # free by construction: rank 0's namespace is new
RANK_IFNAME = "gxnet"
NIC_CLASS = "1:ff00"  # the network card's class on a rank's egress (pair classes are 1:1 .. 1:fb)
CONTROL_CLASS, UNSHAPED_BYTES_PER_S = "1:ff01", 1.25e9  # control traffic through a shaped port: 10 Gbit/s
BRIDGE = "br0"
CONTROL_HOST = 254  # the control namespace's address is SUBNET.254
_NAME = re.compile(r"^gx(?P<pid>\d+)-(?P<seq>\d+)(?:-(?:sw|ctl|r\d+))?$")
_SEQUENCE = itertools.count()
_COMMAND_TIMEOUT_S = 20.0

Matrix = float | None | Sequence[Sequence[float | None]]


class EmulationUnavailable(GalaxyRuntimeError):
    """This machine cannot emulate a cluster (not root, no `ip`/`tc`, no netns, no cgroup)."""


@dataclass(frozen=True)
class CpuCgroups:
    """Where per-rank CPU quotas go: cgroup v1 `cpu` controller or cgroup v2 `cpu.max`."""
    version: int
    root: Path

    def weigh(self, directory: Path, share: float) -> None:
        """CFS weight proportional to `share`: what the directory gets of a CPU busy with others."""
        if self.version == 1:
            (directory / "cpu.shares").write_text(str(max(2, round(share * 1024))))
        else:
            (directory / "cpu.weight").write_text(str(max(1, round(share * 100))))

    def limit(self, directory: Path, share: float) -> None:
        period = max(CPU_PERIOD_US, math.ceil(MIN_CPU_QUOTA_US / share))
        quota = max(MIN_CPU_QUOTA_US, round(share * period))
        if self.version == 1:
            (directory / "cpu.cfs_period_us").write_text(str(period))
            (directory / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (directory / "cpu.max").write_text(f"{quota} {period}")

    def procs_file(self, directory: Path) -> Path:
        return directory / "cgroup.procs"


def detect_cpu_cgroups() -> CpuCgroups:
    """The writable CPU controller: v1 `cpu` if mounted, else v2 with `cpu` delegated to us."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    for line in mounts:
        _, where, kind, options, *_ = line.split()
        if kind == "cgroup" and {"cpu", "rw"} <= set(options.split(",")):
            return CpuCgroups(1, Path(where))
    for line in mounts:
        _, where, kind, *_ = line.split()
        if kind == "cgroup2":
            root = Path(where)
            if "cpu" in (root / "cgroup.subtree_control").read_text().split() and os.access(root, os.W_OK):
                return CpuCgroups(2, root)
            raise EmulationUnavailable(
                f"cgroup v2 at {root} does not delegate the cpu controller (cgroup.subtree_control "
                "lacks 'cpu') and no cgroup v1 cpu controller is mounted; CPU shares cannot be "
                "enforced (pass cpu_shares=None to emulate only the network)")
    raise EmulationUnavailable("no cgroup filesystem with a cpu controller is mounted")


class EmulatedCluster:
    """Namespaces, links and CPU quotas for N ranks; a context manager that removes them all.

    cpu_shares[k]: fraction of one core for rank k (None: unlimited). bandwidth_bytes_per_s and
    latency_s: one number for every pair, or an N x N matrix where [i][j] shapes traffic from
    i to j (None: unshaped). threads(k) = max(1, round(share)) torch threads. cpu_mode:
    "weight" (a CPU each; UsageError when they do not fit), "quota" or "auto" (see above).
    nic_bytes_per_s[k] (one number for all, None: no limit) caps everything device k sends,
    and everything it receives, at that rate together, as its network card on a switched LAN
    would; without it each pair has its own full rate at the same time.
    """

    def __init__(self, cpu_shares: Sequence[float | None], bandwidth_bytes_per_s: Matrix = None,
                 latency_s: Matrix = 0.0, names: Sequence[str] | None = None, control: bool = False,
                 cpu_mode: str = "auto", nic_bytes_per_s: float | Sequence[float | None] | None = None):
        self.control = control  # a control namespace on the bridge (control_namespace, control_address)
        self.cpu_shares = list(cpu_shares)
        self.size = len(self.cpu_shares)
        if not 1 <= self.size <= 250:
            raise UsageError(f"an emulated cluster has 1 to 250 devices, not {self.size}")
        if any(share is not None and share <= 0 for share in self.cpu_shares):
            raise UsageError(f"cpu shares must be > 0 (or None), got {self.cpu_shares}")
        self.names = list(names or (f"rank{k}" for k in range(self.size)))
        self.cpu_mode = cpu_mode
        self.cpus = cpus_for_mode(self.cpu_shares, os.cpu_count() or 1, cpu_mode)
        self.bandwidth = _matrix(bandwidth_bytes_per_s, self.size, "bandwidth_bytes_per_s")
        self.latency = _matrix(latency_s, self.size, "latency_s")
        self.nic = _per_device(nic_bytes_per_s, self.size, "nic_bytes_per_s")
        self.base = f"gx{os.getpid()}-{next(_SEQUENCE)}"
        self.netem_available: bool | None = None  # known after start()
        self._cgroups: CpuCgroups | None = None
        self._created_namespaces: list[str] = []
        self._created_cgroups: list[Path] = []
        self._fillers: list[subprocess.Popen] = []
        self._previous_handlers: dict[int, object] = {}
        self._started = self._closing = False

    @classmethod
    def from_cluster_json(cls, cluster: Mapping, devices: Sequence[str], control: bool = False,
                          cpu_mode: str = "auto", shared_nic: bool | None = None) -> "EmulatedCluster":
        """From plan.json's `cluster` (devices, default_link, link_overrides, shared_card) and the
        device name of each rank (plan.json's plan.devices). `shared_nic` (default: the cluster's
        `shared_card`): each device's network card runs at the fastest of its links, shared by all
        its transfers."""
        if shared_nic is None:
            shared_nic = bool(cluster.get("shared_card", False))
        by_name = {d["name"]: d for d in cluster.get("devices", [])}
        missing = [name for name in devices if name not in by_name]
        if missing:
            raise UsageError(f"the cluster description lacks device(s) {missing} that the plan "
                             f"runs on (it has {sorted(by_name)})")
        default = cluster["default_link"]
        pairs = {frozenset(o["between"]): {**default, **o} for o in cluster.get("link_overrides", [])}

        def link(a: str, b: str, key: str) -> float | None:
            return None if a == b else pairs.get(frozenset((a, b)), default)[key]
        bandwidth = [[link(a, b, "bandwidth_bytes_per_s") for b in devices] for a in devices]
        latency = [[link(a, b, "latency_s") or 0.0 for b in devices] for a in devices]
        shares = [float(by_name[name].get("cpu_share", 1.0)) for name in devices]
        nic = [max((rate for rate in row if rate is not None), default=None) for row in bandwidth]
        return cls(shares, bandwidth, latency, names=list(devices), control=control, cpu_mode=cpu_mode,
                   nic_bytes_per_s=nic if shared_nic else None)

    # --- what the launcher asks for ---------------------------------------------------------

    def namespace(self, rank: int) -> str:
        return f"{self.base}-r{rank}"

    def address(self, rank: int) -> str:
        return f"{SUBNET}.{rank + 1}"

    @property
    def control_namespace(self) -> str:
        return f"{self.base}-ctl"

    @property
    def control_address(self) -> str:
        return f"{SUBNET}.{CONTROL_HOST}"

    @property
    def master_addr(self) -> str:
        return self.address(0)

    @property
    def master_port(self) -> int:
        return MASTER_PORT

    def threads(self, rank: int) -> int:
        share = self.cpu_shares[rank]
        return 1 if share is None else max(1, round(share))

    @property
    def pinned(self) -> bool:
        """CPU shares by weight on pinned CPUs (with fillers), rather than by quota."""
        return any(cpu is not None for cpu in self.cpus)

    def wrap_command(self, rank: int, argv: Sequence[str]) -> list[str]:
        """argv run inside rank's cgroup (joined first) and then its network namespace."""
        if not self._started:
            raise UsageError("EmulatedCluster.wrap_command before start() (use it in a `with`)")
        inside = ["ip", "netns", "exec", self.namespace(rank), *argv]
        if self.cpus[rank] is not None:  # affinity is inherited by everything the rank starts
            inside = ["taskset", "-c", str(self.cpus[rank]), *inside]
        if not self._needs_cgroup(rank):
            return inside
        procs = self._cgroups.procs_file(self._cgroup_dir(f"r{rank}"))
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *inside]

    def _needs_cgroup(self, rank: int) -> bool:
        """A whole CPU of its own needs no cgroup: pinning alone gives exactly one core."""
        share = self.cpu_shares[rank]
        return share is not None and not (self.pinned and share >= 1.0)

    def rank_env(self, rank: int) -> dict[str, str]:
        threads = str(self.threads(rank))
        env = {"GLOO_SOCKET_IFNAME": RANK_IFNAME, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        delays = self.transport_latency(rank)
        if delays:
            env[linkdelay.ENV] = json.dumps(delays, sort_keys=True)
        return env

    def transport_latency(self, rank: int) -> dict[str, float]:
        """Latency the rank's runtime adds to each send, by peer device name, where netem cannot
        (runtime/linkdelay.py); empty when the kernel has netem or no link has latency."""
        if self.netem_available:
            return {}
        return {self.names[peer]: delay for peer, delay in enumerate(self.latency[rank])
                if peer != rank and delay}

    # --- faults (galaxy-serve --inject: serve/faults.py) ---------------------------------------

    def set_cpu_share(self, rank: int, share: float) -> None:
        """Give a running device another CPU share: a device that got busy (or idle again)."""
        if self._cgroups is None or self.cpu_shares[rank] is None:
            raise EmulationUnavailable(f"device {self.names[rank]} has no CPU share to change (no cpu cgroup)")
        if share <= 0:
            raise UsageError(f"a CPU share must be > 0, not {share}")
        self.cpu_shares[rank] = share
        directory = self._cgroup_dir(f"r{rank}")
        if directory.exists():
            (self._cgroups.weigh if self.pinned else self._cgroups.limit)(directory, share)
        else:  # it had a whole CPU of its own: it gets a cgroup now, and its processes move in
            self._make_cgroup(f"r{rank}", share)
            procs = self._cgroups.procs_file(directory)
            for pid in _run(["ip", "netns", "pids", self.namespace(rank)]).split():
                try:
                    procs.write_text(pid)
                except OSError:  # gone meanwhile
                    pass
        cpu = self.cpus[rank]
        if cpu is not None:  # the filler beside it takes what it no longer gets
            filler = self._cgroup_dir(f"f{cpu}")
            if filler.exists():
                self._cgroups.weigh(filler, max(0.01, 1.0 - share))
            elif share < 0.99:
                self._fillers.append(self._start_filler(cpu, 1.0 - share))
        log.info("emulator: %s now has a CPU share of %.3f", self.names[rank], share)

    def link_down(self, rank: int) -> None:
        """Take a device's link down (its switch port): nothing reaches it or leaves it any more."""
        _run(["ip", "-n", f"{self.base}-sw", "link", "set", f"r{rank}", "down"])
        log.info("emulator: the link of %s is down", self.names[rank])

    # --- lifetime ------------------------------------------------------------------------------

    def __enter__(self) -> "EmulatedCluster":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        if self._started:
            raise UsageError(f"emulated cluster {self.base} was already started; make a new one")
        self._started = True
        _check_prerequisites()
        if any(share is not None for share in self.cpu_shares):
            self._cgroups = detect_cpu_cgroups()
        removed = cleanup_stale()
        if removed:
            log.warning("emulator: removed leftovers of a crashed earlier run: %s", ", ".join(removed))
        self._install_handlers()
        try:
            self._build_network()
            self._build_cgroups()
        except BaseException:
            self.close()
            raise
        log.info("%s", self)

    def close(self) -> None:
        """Remove everything start() made; safe to call twice, logs what it could not remove."""
        if self._closing:
            return
        self._closing = True
        try:
            for filler in self._fillers:  # our children: reaped here, or their cgroups stay busy
                filler.kill()
                filler.wait()
            self._fillers = []
            leftovers = _remove(self._created_namespaces, self._created_cgroups, self._cgroups)
            if leftovers:
                log.warning("emulator: could not remove %s; run "
                            "galaxy.host.emulate.cleanup_stale() after this process exits",
                            ", ".join(leftovers))
            self._created_namespaces, self._created_cgroups = [], []
        finally:
            self._restore_handlers()

    # --- building ------------------------------------------------------------------------------

    def _build_network(self) -> None:
        switch = f"{self.base}-sw"
        try:
            _run(["ip", "netns", "add", switch])
        except GalaxyRuntimeError as exc:
            raise EmulationUnavailable(f"cannot create a network namespace: {exc}") from exc
        self._created_namespaces.append(switch)
        _run(["ip", "-n", switch, "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "-n", switch, "link", "set", BRIDGE, "up"])
        for rank in range(self.size):
            self._attach(switch, self.namespace(rank), f"r{rank}", self.address(rank))
            _run(["ip", "netns", "exec", self.namespace(rank), "sysctl", "-q", "-w", *SOCKET_BUFFERS])
        if self.control:
            self._attach(switch, self.control_namespace, "c", self.control_address)
        self.netem_available = _has_netem(self.namespace(0))
        for rank in range(self.size):
            self._shape(rank)
            if self.nic[rank] is not None:
                self._shape_card_inbound(switch, rank)
        if not self.netem_available and any(v for row in self.latency for v in row):
            worst = max(v for row in self.latency for v in row)
            log.info("emulator: no netem qdisc on this kernel: link latency (up to %.3g ms) is added by "
                     "each rank's transport instead (%s: every send leaves that long after it is posted)",
                     worst * 1e3, linkdelay.ENV)

    def _shape_card_inbound(self, switch: str, rank: int) -> None:
        """What the switch delivers to `rank` shares its card's rate; traffic from the control
        namespace stays unshaped (a class of its own at a rate no link reaches)."""
        tc = ["tc", "-n", switch]
        _add_htb(tc, f"r{rank}", self.nic[rank], default=1)
        if self.control:
            _add_class(tc, f"r{rank}", "1:", CONTROL_CLASS, UNSHAPED_BYTES_PER_S, UNSHAPED_BYTES_PER_S)
            _run([*tc, "filter", "add", "dev", f"r{rank}", "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                  "match", "ip", "src", f"{self.control_address}/32", "flowid", CONTROL_CLASS])

    def _attach(self, switch: str, ns: str, port: str, address: str) -> None:
        """A new namespace `ns` on the bridge's `port`, its end `gxnet` at `address`."""
        _run(["ip", "netns", "add", ns])
        self._created_namespaces.append(ns)
        _run(["ip", "-n", switch, "link", "add", port, "mtu", str(MTU), "type", "veth",
              "peer", "name", RANK_IFNAME, "mtu", str(MTU), "netns", ns])
        _run(["ip", "-n", switch, "link", "set", port, "master", BRIDGE, "up"])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "-n", ns, "addr", "add", f"{address}/24", "dev", RANK_IFNAME])
        _run(["ip", "-n", ns, "link", "set", RANK_IFNAME, "up"])

    def _shape(self, rank: int) -> None:
        """htb on rank's egress: class 1:<peer+1> per destination, selected by a u32 filter;
        with a network card rate, under one parent class 1:ff00 at that rate (each pair is
        guaranteed an equal part of it and may borrow up to its own rate)."""
        tc = ["tc", "-n", self.namespace(rank)]
        nic, parent = self.nic[rank], "1:"
        if nic is None:
            _run([*tc, "qdisc", "add", "dev", RANK_IFNAME, "root", "handle", "1:", "htb", "default", "0"])
        else:
            parent = _add_htb(tc, RANK_IFNAME, nic, default=0, classid=NIC_CLASS)
        peers = [p for p in range(self.size) if p != rank and self.bandwidth[rank][p] is not None]
        for peer in peers:
            rate, delay = self.bandwidth[rank][peer], self.latency[rank][peer]
            classid = f"1:{peer + 1:x}"
            ceil = rate if nic is None else min(rate, nic)
            _add_class(tc, RANK_IFNAME, parent, classid, ceil if nic is None else ceil / len(peers), ceil)
            if delay and self.netem_available:
                _run([*tc, "qdisc", "add", "dev", RANK_IFNAME, "parent", classid, "handle",
                      f"{peer + 1:x}:", "netem", "delay", f"{round(delay * 1e6)}us"])
            _run([*tc, "filter", "add", "dev", RANK_IFNAME, "parent", "1:", "protocol", "ip",
                  "prio", "1", "u32", "match", "ip", "dst", f"{self.address(peer)}/32",
                  "flowid", classid])

    def _cgroup_dir(self, name: str) -> Path:
        return self._cgroups.root / self.base / name

    def _build_cgroups(self) -> None:
        if self._cgroups is None:
            return
        parent = self._cgroups.root / self.base
        try:
            parent.mkdir()
            self._created_cgroups.append(parent)
            if self._cgroups.version == 2:
                (parent / "cgroup.subtree_control").write_text("+cpu")
            for rank, share in enumerate(self.cpu_shares):
                if self._needs_cgroup(rank):
                    self._make_cgroup(f"r{rank}", share)
            for cpu, spare in self._spare_per_cpu().items():
                self._fillers.append(self._start_filler(cpu, spare))
        except OSError as exc:
            raise EmulationUnavailable(f"cannot set CPU shares in cgroup v{self._cgroups.version} "
                                       f"under {parent}: {exc}") from exc
        total = sum(share for share in self.cpu_shares if share is not None)
        if total > (os.cpu_count() or 1) + 1e-9:
            log.warning("emulator: cpu shares add up to %.2f cores but this machine has %d; "
                        "devices computing at the same time get less than their share",
                        total, os.cpu_count())

    def _make_cgroup(self, name: str, share: float) -> Path:
        directory = self._cgroup_dir(name)
        directory.mkdir()
        self._created_cgroups.insert(0, directory)  # children first
        if self.pinned:
            self._cgroups.weigh(directory, share)
        else:
            self._cgroups.limit(directory, share)
        return directory

    def _spare_per_cpu(self) -> dict[int, float]:
        """Per pinned CPU, the share its device leaves unused (> 1%)."""
        return {cpu: 1.0 - share for cpu, share in zip(self.cpus, self.cpu_shares)
                if cpu is not None and share < 0.99}

    def _start_filler(self, cpu: int, spare: float) -> subprocess.Popen:
        """A busy loop pinned to `cpu` that takes its `spare` share, so the device there runs at
        its own share even when the machine is otherwise idle."""
        procs = self._cgroups.procs_file(self._make_cgroup(f"f{cpu}", spare))
        return subprocess.Popen(["/bin/sh", "-c", 'echo $$ > "$0" && exec taskset -c "$1" /bin/sh -c '
                                 '"while :; do :; done"', str(procs), str(cpu)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)  # no filler spins on after a SIGKILL

    # --- signals -------------------------------------------------------------------------------

    def _install_handlers(self) -> None:
        atexit.register(self.close)
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self._previous_handlers[sig] = signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame) -> None:
        if self._closing:
            return  # let teardown finish; it restores the previous handlers
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)  # unwinds through __exit__, which tears down

    def _restore_handlers(self) -> None:
        atexit.unregister(self.close)
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}

    def __str__(self) -> str:
        rows = [f"emulated cluster {self.base}: {self.size} device(s) on {SUBNET}.0/24, "
                f"bridge in namespace {self.base}-sw, MTU {MTU}, "
                f"latency {'netem' if self.netem_available else 'in the transport (no netem)'}, "
                f"CPU shares by {'weight on pinned CPUs' if self.pinned else 'quota'}",
                f"  {'rank':<5}{'device':<14}{'namespace':<18}{'address':<12}{'cpu share':>10}"
                f"{'threads':>9}{'cpu':>5}"]
        for k in range(self.size):
            share = "-" if self.cpu_shares[k] is None else f"{self.cpu_shares[k]:.2f}"
            cpu = "-" if self.cpus[k] is None else str(self.cpus[k])
            rows.append(f"  {k:<5}{self.names[k]:<14}{self.namespace(k):<18}{self.address(k):<12}"
                        f"{share:>10}{self.threads(k):>9}{cpu:>5}")
        rows += [f"  filler on cpu {cpu}: share {spare:.2f}" for cpu, spare in self._spare_per_cpu().items()]
        rows += [f"  {self.names[k]}'s network card: {nic * 8 / 1e6:.1f} Mbit/s out and in, shared by its peers"
                 for k, nic in enumerate(self.nic) if nic is not None]
        for i, j in itertools.permutations(range(self.size), 2):
            rate = self.bandwidth[i][j]
            if rate is not None:
                rows.append(f"  {self.names[i]} -> {self.names[j]}: {rate * 8 / 1e6:.1f} Mbit/s, "
                            f"{self.latency[i][j] * 1e3:.3g} ms")
        return "\n".join(rows)


CPU_MODES = ("auto", "weight", "quota")


def cpus_for_mode(shares: Sequence[float | None], cpu_count: int, mode: str) -> list[int | None]:
    """The CPU of each device under `mode`: "weight" pins every limited device to a CPU of its
    own (an error when they do not fit), "quota" pins none, "auto" pins when they fit."""
    if mode not in CPU_MODES:
        raise UsageError(f"cpu mode {mode!r} is not one of {', '.join(CPU_MODES)}")
    if mode == "quota":
        return [None] * len(shares)
    cpus = pin_to_cpus(shares, cpu_count)
    limited = [share for share in shares if share is not None]
    if mode == "weight" and limited and all(cpu is None for cpu in cpus):
        raise UsageError(f"cpu mode 'weight' needs a CPU of its own for each of the {len(limited)} "
                         f"devices with a share of at most 1 (shares {list(shares)}), and this "
                         f"machine has {cpu_count} CPU(s); use cpu mode 'quota' (works anywhere)")
    return cpus


def pin_to_cpus(shares: Sequence[float | None], cpu_count: int) -> list[int | None]:
    """A CPU of its own for each device with a share of at most one CPU when there are enough
    of them, else none (CPU quotas then share the machine)."""
    limited = [r for r, share in enumerate(shares) if share is not None]
    if len(limited) > cpu_count or any(shares[r] > 1.0 for r in limited):
        return [None] * len(shares)
    cpus: list[int | None] = [None] * len(shares)
    for cpu, rank in enumerate(limited):
        cpus[rank] = cpu
    return cpus


def cleanup_stale() -> list[str]:
    """Remove namespaces and cgroups named gx<pid>-... whose process <pid> is gone.

    Processes still inside them (ranks of a crashed launcher) are killed first. Returns the
    names removed.
    """
    namespaces = [name for name in _list_namespaces() if _is_stale(name)]
    cgroups = []
    try:
        controller = detect_cpu_cgroups()
        for parent in controller.root.iterdir():
            if parent.is_dir() and _is_stale(parent.name):
                cgroups += [child for child in parent.iterdir() if child.is_dir()] + [parent]
    except (EmulationUnavailable, OSError):
        controller = None
    leftovers = _remove(namespaces, cgroups, controller)
    return [name for name in namespaces + [str(c) for c in cgroups] if name not in leftovers]


# --- helpers -------------------------------------------------------------------------------------

def _matrix(value: Matrix, size: int, what: str) -> list[list[float | None]]:
    if value is None or isinstance(value, (int, float)):
        rows = [[value] * size for _ in range(size)]
    else:
        rows = [list(row) for row in value]
        if len(rows) != size or any(len(row) != size for row in rows):
            raise UsageError(f"{what} must be one number or a {size} x {size} matrix")
    if any(v is not None and (v < 0 or (v == 0 and what.startswith("bandwidth")))
           for row in rows for v in row):
        raise UsageError(f"{what} must be positive (bandwidth) or >= 0 (latency), got {rows}")
    return rows


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise EmulationUnavailable("emulation needs root (network namespaces and tc need "
                                   "CAP_NET_ADMIN, CPU quotas need cgroup writes)")
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise EmulationUnavailable(f"`{tool}` (iproute2) is not installed")


def _per_device(value: float | Sequence[float | None] | None, size: int, what: str) -> list[float | None]:
    values = [value] * size if value is None or isinstance(value, (int, float)) else list(value)
    if len(values) != size or any(v is not None and v <= 0 for v in values):
        raise UsageError(f"{what} must be one positive number or one (or None) per device, got {value}")
    return values


def _add_htb(tc: list[str], dev: str, rate: float, default: int, classid: str = "1:1") -> str:
    """An htb root on `dev` with one class at `rate` (unclassified traffic: class `default`,
    0 = unshaped); returns the class id."""
    _run([*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", str(default)])
    _add_class(tc, dev, "1:", classid, rate, rate)
    return classid


def _add_class(tc: list[str], dev: str, parent: str, classid: str, rate: float, ceil: float) -> None:
    burst = max(MIN_BURST_BYTES, round(ceil * BURST_S))
    _run([*tc, "class", "add", "dev", dev, "parent", parent, "classid", classid, "htb",
          "rate", f"{round(rate * 8)}bit", "ceil", f"{round(ceil * 8)}bit", "burst", str(burst),
          "cburst", str(burst), "quantum", str(MTU + 100)])


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=_COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GalaxyRuntimeError(f"emulator: `{' '.join(argv)}` failed: {exc}") from exc
    if done.returncode != 0:
        raise GalaxyRuntimeError(f"emulator: `{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done.stdout


def _has_netem(namespace: str) -> bool:
    """Try a netem qdisc on the namespace's loopback; the error says whether the kernel has it."""
    try:
        _run(["tc", "-n", namespace, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"])
    except GalaxyRuntimeError as exc:
        log.info("emulator: netem unavailable (%s)", str(exc).rsplit(": ", 1)[-1])
        return False
    _run(["tc", "-n", namespace, "qdisc", "del", "dev", "lo", "root"])
    return True


def _list_namespaces() -> list[str]:
    if shutil.which("ip") is None:
        return []
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line.strip()]


def _is_stale(name: str) -> bool:
    match = _NAME.match(name)
    if not match:
        return False
    try:
        os.kill(int(match["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _remove(namespaces: Sequence[str], cgroups: Sequence[Path], controller: CpuCgroups | None,
            settle_s: float = 5.0) -> list[str]:
    """Kill what runs inside, delete namespaces (veths first: deletion is synchronous then),
    then cgroups (children listed before parents). Returns what is still there."""
    pids = set()
    for ns in namespaces:
        try:
            pids.update(int(p) for p in _run(["ip", "netns", "pids", ns]).split())
        except GalaxyRuntimeError:
            pass
    for directory in cgroups:
        try:
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
        except OSError:
            pass
    pids.discard(os.getpid())
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    leftovers = []
    for ns in namespaces:
        if ns.endswith("-sw"):
            for port in _run_quiet(["ip", "-n", ns, "-o", "link", "show", "type", "veth"]):
                _run_quiet(["ip", "-n", ns, "link", "del", port.split(":")[1].strip().split("@")[0]])
    for ns in namespaces:
        try:
            _run(["ip", "netns", "delete", ns])
        except GalaxyRuntimeError as exc:
            if ns in _list_namespaces():
                leftovers.append(ns)
                log.debug("%s", exc)
    deadline = time.monotonic() + settle_s
    for directory in cgroups:
        while directory.exists():
            try:
                directory.rmdir()
            except OSError:  # EBUSY until the killed processes are reaped
                if time.monotonic() > deadline:
                    leftovers.append(str(directory))
                    break
                time.sleep(0.05)
    return leftovers


def _run_quiet(argv: list[str]) -> list[str]:
    try:
        return _run(argv).splitlines()
    except GalaxyRuntimeError:
        return []
