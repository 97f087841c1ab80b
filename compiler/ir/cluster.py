"""The cluster: devices and the links between them. Plain data, JSON round-trip.

Units are in the field names. The TOML reader lives in `cluster_file.py`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

FORMAT_VERSION = 1

# CPU a rank spends per byte it sends or receives (gloo copies, TCP). galaxy-profile measured
# 0.2-0.3 ns/byte over loopback and the runtime's per-rank breakdown about 0.5 ns/byte in the
# emulator (veth MTU 60000); the earlier 5 ns/byte (DESIGN.md) came with MTU 1500 and ranks
# sharing a core. Used when a device gives no figure or profile.
DEFAULT_COMM_CPU_S_PER_BYTE = 0.5e-9


@dataclass(frozen=True)
class Device:
    name: str
    mem_bytes: int
    flops_per_s: float  # sustained fp32 GEMM rate
    host: str = ""  # where the device lives on the user's network (informational)
    cpu_share: float = 1.0  # fraction of one core the emulator gives this device
    comm_cpu_s_per_byte: float = DEFAULT_COMM_CPU_S_PER_BYTE
    profile: str = ""  # path of a galaxy-profile JSON, if the rates came from one
    # SDPA rate (its two matrix products per second, softmax in the time) from a profile;
    # 0.0: attention scores are charged at flops_per_s like every GEMM (cost/table.py)
    attention_flops_per_s: float = 0.0
    # Fraction of its overlappable GEMM time during which this device's transfers progress.
    # 1.0 with spare cores; measured lower on a single core under a CPU quota (docs/EMULATION.md).
    overlap_efficiency: float = 1.0
    # GEMM speed by rows per GEMM, relative to the model's whole sequence, as (rows, speed) points
    # from a profile (empty: cost/tiling.py's default curve). Token tiles make GEMMs shorter.
    gemm_rows_speed: tuple[tuple[int, float], ...] = ()
    # Decode steps (one token) stream weights through a GEMV: bytes per second it reads them at,
    # and the fixed seconds of one op's dispatch, from a galaxy-profile; 0.0: derived from
    # flops_per_s (cost/decode.py).
    gemv_bytes_per_s: float = 0.0
    dispatch_s_per_op: float = 0.0


DECODE_RATE_FIELDS = ("gemv_bytes_per_s", "dispatch_s_per_op")


def _device_json(device: Device) -> dict:
    """A device's fields; decode rates only when measured (older files stay as they were)."""
    data = asdict(device)
    for key in DECODE_RATE_FIELDS:
        if not data[key]:
            del data[key]
    return data


@dataclass(frozen=True)
class Link:
    bandwidth_bytes_per_s: float
    latency_s: float


@dataclass(frozen=True)
class Cluster:
    name: str
    devices: tuple[Device, ...]
    default_link: Link
    # Per-pair overrides, keyed by the two device names in sorted order.
    link_overrides: tuple[tuple[str, str, Link], ...] = field(default_factory=tuple)
    # True: each device has one network card for all its transfers, at its links' rate (a switched
    # LAN). False: every pair of devices has its link's full rate at once.
    shared_card: bool = False

    def device(self, name: str) -> Device:
        for dev in self.devices:
            if dev.name == name:
                return dev
        raise KeyError(name)

    def link(self, a: str, b: str) -> Link:
        lo, hi = sorted((a, b))
        for x, y, link in self.link_overrides:
            if (x, y) == (lo, hi):
                return link
        return self.default_link

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.devices)

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "devices": [_device_json(d) for d in self.devices],
            "default_link": asdict(self.default_link),
            "link_overrides": [{"between": [a, b], **asdict(link)} for a, b, link in self.link_overrides],
            "shared_card": self.shared_card,
        }

    @staticmethod
    def from_json(data: dict) -> "Cluster":
        return Cluster(
            name=data["name"],
            devices=tuple(Device(**{**d, "gemm_rows_speed": tuple(tuple(p) for p in d.get("gemm_rows_speed", ()))})
                          for d in data["devices"]),
            default_link=Link(**data["default_link"]),
            link_overrides=tuple(
                (o["between"][0], o["between"][1],
                 Link(o["bandwidth_bytes_per_s"], o["latency_s"]))
                for o in data["link_overrides"]
            ),
            shared_card=data.get("shared_card", False),
        )

    def __str__(self) -> str:
        rows = [f"cluster {self.name}: {len(self.devices)} devices"]
        for d in self.devices:
            rows.append(f"  {d.name:<14} {d.flops_per_s / 1e9:8.1f} GFLOP/s  {d.mem_bytes / 2**30:7.2f} GiB")
        bw = self.default_link.bandwidth_bytes_per_s * 8 / 1e6
        rows.append(f"  links: {bw:.0f} Mbit/s, {self.default_link.latency_s * 1e3:.2f} ms"
                    f" (+{len(self.link_overrides)} overrides)")
        return "\n".join(rows)
