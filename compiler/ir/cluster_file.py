"""Cluster TOML files -> `Cluster` (compiler/ir/cluster.py). Every problem names its field.

Format (version 1; `clusters/README.md` has the same with examples):

    format_version = 1                 # required, must be 1
    name = "home-3"                    # required
    description = "..."                # optional, informational (not kept in the Cluster)

    [[devices]]                        # one table per device, at least one; order = rank order
    name = "laptop"                    # required, unique; letters, digits, '-', '_', '.'
    memory = "8 GiB"                   # required: memory Galaxy may use on the device
                                       #   units B, KB, MB, GB, TB (powers of 1000), KiB, MiB, GiB, TiB
    gflops = 60.0                      # sustained fp32 GEMM GFLOP/s ...
    # profile = "laptop.json"          # ... or a galaxy-profile JSON, relative to this file:
                                       #   {"format_version": 1, "flops_per_s": ..., "comm_cpu_s_per_byte": ...,
                                       #    "attention_flops_per_s": ..., ...}; PROFILE_KEYS lists every key
                                       #   galaxy-profile writes (docs/PROFILING.md); exactly one of
                                       #   gflops / profile
    cpu_share = 1.0                    # optional, > 0: fraction of one core the emulator gives it (1.0)
    overlap_efficiency = 1.0           # optional, 0-1: share of its GEMM time that transfers can hide behind
    gemm_rows_speed = [[32, 0.66], [256, 1.0]]  # optional: GEMM speed by rows per GEMM (the profile's
                                       #   curve, else cost/tiling.py's default); rows > 0, speed > 0
    host = "192.168.1.20"              # optional, informational
    comm_cpu_ns_per_byte = 0.5         # optional, >= 0: CPU time per byte moved; overrides the
                                       #   profile's figure; default 0.5 ns (DEFAULT_COMM_CPU_S_PER_BYTE)

    [links]                            # required: every pair of devices unless overridden
    bandwidth = "1 Gbit/s"             # > 0; bit/s, kbit/s, Mbit/s, Gbit/s, B/s, KB/s, MB/s, GB/s
    latency = "0.5 ms"                 # >= 0; s, ms, us
    card = "per-pair"                  # optional: "per-pair" (every pair at full rate at once) or
                                       #   "shared" (one card a device: its transfers share its rate)

    [[links.override]]                 # optional, one per pair
    between = ["laptop", "phone"]      # two different device names from [[devices]]
    bandwidth = "100 Mbit/s"           # either key may be left out: it then comes from [links]
    latency = "2 ms"

Field names in errors: `devices[2].memory` (0-based, as in the file's order),
`links.bandwidth`, `links.override[0].between`. Unknown keys are errors, not ignored, so a typo
never silently falls back to a default.
"""
from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from galaxy.compiler.errors import ClusterFileError
from galaxy.compiler.ir.cluster import DECODE_RATE_FIELDS, DEFAULT_COMM_CPU_S_PER_BYTE, Cluster, Device, Link

SUPPORTED_FORMAT_VERSIONS = (1,)
PROFILE_FORMAT_VERSION = 1

MEMORY_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
BANDWIDTH_UNITS = {"bit/s": 1 / 8, "kbit/s": 1e3 / 8, "Mbit/s": 1e6 / 8, "Gbit/s": 1e9 / 8,
                   "B/s": 1.0, "KB/s": 1e3, "MB/s": 1e6, "GB/s": 1e9}  # -> bytes per second
LATENCY_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}

TOP_KEYS = {"format_version", "name", "description", "devices", "links"}
DEVICE_KEYS = {"name", "memory", "gflops", "profile", "cpu_share", "host", "comm_cpu_ns_per_byte",
               "overlap_efficiency", "gemm_rows_speed"}
LINK_KEYS = {"bandwidth", "latency", "override", "card"}
CARDS = ("per-pair", "shared")
OVERRIDE_KEYS = {"between", "bandwidth", "latency"}
# Every key galaxy-profile writes (compiler/profile/report.py); the reader uses the rates, the
# rest (gemm_flops_per_s, elementwise_bytes_per_s, device, ...) is informational.
PROFILE_KEYS = {"format_version", "flops_per_s", "comm_cpu_s_per_byte", "attention_flops_per_s",
                "gemm_flops_per_s", "elementwise_bytes_per_s", "device", "torch", "threads", "measured_at",
                "shapes", "method", "gemm_rows_speed", "gemv_bytes_per_s", "dispatch_s_per_op"}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_QUANTITY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z/]+)\s*$")


def default_cluster_path() -> Path:
    """The bundled default cluster, `clusters/home-3.toml` in the source checkout."""
    return Path(__file__).resolve().parents[2] / "clusters" / "home-3.toml"


def load_cluster(path: str | Path) -> Cluster:
    """Read and validate a cluster TOML file (format above)."""
    reader = _Reader(Path(path))
    return reader.cluster(reader.parse())


class _Reader:
    """Validates one file; `fail` raises ClusterFileError(path, field, problem)."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> None:
        raise ClusterFileError(str(self.path), field, problem)

    def parse(self) -> dict:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            self.fail("(file)", "no such file; see clusters/README.md for the format and examples")
        except OSError as err:
            self.fail("(file)", f"cannot read it: {err}")
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            self.fail("(file)", f"not valid TOML: {err}")

    # --- the document -------------------------------------------------------------------------

    def cluster(self, doc: dict) -> Cluster:
        self.keys(doc, "", TOP_KEYS, required=("format_version", "name", "devices", "links"))
        version = doc["format_version"]
        if isinstance(version, bool) or version not in SUPPORTED_FORMAT_VERSIONS:
            self.fail("format_version", f"got {version!r}; this Galaxy reads format_version "
                                        f"{' or '.join(map(str, SUPPORTED_FORMAT_VERSIONS))}")
        name = self.string(doc["name"], "name")
        if "description" in doc:
            self.string(doc["description"], "description", allow_empty=True)
        raw_devices = doc["devices"]
        if not isinstance(raw_devices, list) or not all(isinstance(d, dict) for d in raw_devices):
            self.fail("devices", "expected [[devices]] tables, one per device")
        if not raw_devices:
            self.fail("devices", "at least one [[devices]] table is required")
        devices = tuple(self.device(raw, f"devices[{i}]") for i, raw in enumerate(raw_devices))
        seen: dict[str, int] = {}
        for i, dev in enumerate(devices):
            if dev.name in seen:
                self.fail(f"devices[{i}].name", f"{dev.name!r} is already the name of devices[{seen[dev.name]}]; "
                                                f"device names must be unique")
            seen[dev.name] = i
        default_link, overrides = self.links(doc["links"], set(seen))
        card = doc["links"].get("card", "per-pair")
        if card not in CARDS:
            self.fail("links.card", f"{card!r} is not one of {', '.join(map(repr, CARDS))}")
        return Cluster(name=name, devices=devices, default_link=default_link, link_overrides=overrides,
                       shared_card=card == "shared")

    def device(self, raw: dict, where: str) -> Device:
        self.keys(raw, where, DEVICE_KEYS, required=("name", "memory"))
        name = self.string(raw["name"], f"{where}.name")
        if not _NAME_RE.match(name):
            self.fail(f"{where}.name", f"{name!r}: use letters, digits, '-', '_' and '.', starting with a "
                                       f"letter or digit")
        mem_bytes = int(self.quantity(raw["memory"], f"{where}.memory", MEMORY_UNITS, "8 GiB", positive=True))
        if ("gflops" in raw) == ("profile" in raw):
            self.fail(f"{where}.gflops", "give exactly one of gflops (sustained fp32 GEMM GFLOP/s) or "
                                         "profile (a galaxy-profile JSON)")
        comm = DEFAULT_COMM_CPU_S_PER_BYTE
        profile = ""
        attention_flops, decode_rates = 0.0, {}
        rows_speed: tuple[tuple[int, float], ...] = ()
        if "gflops" in raw:
            flops = self.number(raw["gflops"], f"{where}.gflops", positive=True) * 1e9
        else:
            profile = self.string(raw["profile"], f"{where}.profile")
            flops, comm, attention_flops, rows_speed, decode_rates = self.profile(profile, f"{where}.profile")
        if "gemm_rows_speed" in raw:
            rows_speed = self.rows_speed(raw["gemm_rows_speed"], f"{where}.gemm_rows_speed")
        if "comm_cpu_ns_per_byte" in raw:
            comm = self.number(raw["comm_cpu_ns_per_byte"], f"{where}.comm_cpu_ns_per_byte") * 1e-9
        return Device(
            name=name,
            mem_bytes=mem_bytes,
            flops_per_s=flops,
            host=self.string(raw.get("host", ""), f"{where}.host", allow_empty=True),
            cpu_share=self.number(raw.get("cpu_share", 1.0), f"{where}.cpu_share", positive=True),
            comm_cpu_s_per_byte=comm,
            profile=profile,
            attention_flops_per_s=attention_flops,
            overlap_efficiency=self.fraction(raw.get("overlap_efficiency", 1.0), f"{where}.overlap_efficiency"),
            gemm_rows_speed=rows_speed,
            **decode_rates,
        )

    def rows_speed(self, raw: Any, where: str) -> tuple[tuple[int, float], ...]:
        """[[rows, speed], ...]: positive rows, each once, and positive speeds."""
        if not isinstance(raw, list) or not all(isinstance(p, list) and len(p) == 2 for p in raw) or not raw:
            self.fail(where, f"expected a list of [rows, speed] pairs, e.g. [[32, 0.66], [256, 1.0]], got {raw!r}")
        points = tuple(sorted((int(self.number(r, where, positive=True)), self.number(s, where, positive=True))
                              for r, s in raw))
        if len({r for r, _ in points}) != len(points):
            self.fail(where, f"each row count may appear once, got {raw!r}")
        return points

    def profile(self, relative: str, where: str
                ) -> tuple[float, float, float, tuple[tuple[int, float], ...], dict[str, float]]:
        """(flops_per_s, comm_cpu_s_per_byte, attention_flops_per_s or 0.0, gemm_rows_speed or (), the
        decode rates it has) of a profile file."""
        file = self.path.parent / relative
        try:
            data = json.loads(file.read_text())
        except FileNotFoundError:
            self.fail(where, f"profile file {str(file)!r} does not exist; run galaxy-profile -o {relative} "
                             f"on the device, or give gflops instead")
        except (OSError, json.JSONDecodeError) as err:
            self.fail(where, f"profile file {str(file)!r} is not readable JSON: {err}")
        if not isinstance(data, dict):
            self.fail(where, f"profile file {str(file)!r} must hold a JSON object")
        unknown = sorted(set(data) - PROFILE_KEYS)
        missing = sorted({"format_version", "flops_per_s"} - set(data))
        if unknown or missing:
            self.fail(where, f"profile file {str(file)!r}: " + "; ".join(
                ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])))
        if data["format_version"] != PROFILE_FORMAT_VERSION:
            self.fail(where, f"profile file {str(file)!r} has format_version {data['format_version']!r}; "
                             f"expected {PROFILE_FORMAT_VERSION}")
        flops = self.number(data["flops_per_s"], where, positive=True, context=f"{file.name}: flops_per_s ")
        comm = self.number(data.get("comm_cpu_s_per_byte", DEFAULT_COMM_CPU_S_PER_BYTE), where,
                           context=f"{file.name}: comm_cpu_s_per_byte ")
        attention = 0.0
        if "attention_flops_per_s" in data:
            attention = self.number(data["attention_flops_per_s"], where, positive=True,
                                    context=f"{file.name}: attention_flops_per_s ")
        rows_speed = self.rows_speed(data["gemm_rows_speed"], where) if "gemm_rows_speed" in data else ()
        decode_rates = {key: self.number(data[key], where, positive=True, context=f"{file.name}: {key} ")
                        for key in DECODE_RATE_FIELDS if key in data}
        return flops, comm, attention, rows_speed, decode_rates

    def links(self, raw: Any, names: set[str]) -> tuple[Link, tuple[tuple[str, str, Link], ...]]:
        if not isinstance(raw, dict):
            self.fail("links", "expected a [links] table with bandwidth and latency")
        self.keys(raw, "links", LINK_KEYS, required=("bandwidth", "latency"))
        default = Link(bandwidth_bytes_per_s=self.bandwidth(raw["bandwidth"], "links.bandwidth"),
                       latency_s=self.latency(raw["latency"], "links.latency"))
        raw_overrides = raw.get("override", [])
        if not isinstance(raw_overrides, list) or not all(isinstance(o, dict) for o in raw_overrides):
            self.fail("links.override", "expected [[links.override]] tables")
        overrides: dict[tuple[str, str], Link] = {}
        for i, entry in enumerate(raw_overrides):
            where = f"links.override[{i}]"
            self.keys(entry, where, OVERRIDE_KEYS, required=("between",))
            pair = self.pair(entry["between"], f"{where}.between", names)
            if pair in overrides:
                self.fail(f"{where}.between", f"the pair {list(pair)} is overridden twice; keep one entry")
            if "bandwidth" not in entry and "latency" not in entry:
                self.fail(where, "an override needs bandwidth, latency or both")
            overrides[pair] = Link(
                bandwidth_bytes_per_s=(self.bandwidth(entry["bandwidth"], f"{where}.bandwidth")
                                       if "bandwidth" in entry else default.bandwidth_bytes_per_s),
                latency_s=(self.latency(entry["latency"], f"{where}.latency")
                           if "latency" in entry else default.latency_s),
            )
        return default, tuple((a, b, link) for (a, b), link in sorted(overrides.items()))

    def pair(self, raw: Any, where: str, names: set[str]) -> tuple[str, str]:
        if not (isinstance(raw, list) and len(raw) == 2 and all(isinstance(x, str) for x in raw)):
            self.fail(where, f"expected two device names, e.g. [\"laptop\", \"phone\"]; got {raw!r}")
        for name in raw:
            if name not in names:
                self.fail(where, f"{name!r} is not a device in this file; devices are {sorted(names)}"
                                 + _did_you_mean(name, names))
        if raw[0] == raw[1]:
            self.fail(where, f"a link joins two different devices; got {raw!r}")
        lo, hi = sorted(raw)
        return lo, hi

    # --- values -------------------------------------------------------------------------------

    def keys(self, table: dict, where: str, allowed: set[str], required: tuple[str, ...]) -> None:
        prefix = f"{where}." if where else ""
        for key in sorted(table):
            if key not in allowed:
                self.fail(prefix + key, f"unknown key; allowed here: {sorted(allowed)}" + _did_you_mean(key, allowed))
        for key in required:
            if key not in table:
                self.fail(prefix + key, "missing; this key is required")

    def string(self, value: Any, where: str, allow_empty: bool = False) -> str:
        if not isinstance(value, str) or (not value and not allow_empty):
            self.fail(where, f"expected a non-empty string, got {value!r}")
        return value

    def number(self, value: Any, where: str, positive: bool = False, context: str = "") -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, f"{context}expected a number, got {value!r}")
        if value < 0 or (positive and value == 0):
            self.fail(where, f"{context}must be {'> 0' if positive else '>= 0'}, got {value!r}")
        return float(value)

    def fraction(self, value: Any, where: str) -> float:
        number = self.number(value, where)
        if number > 1:
            self.fail(where, f"must be between 0 and 1, got {value!r}")
        return number

    def quantity(self, value: Any, where: str, units: dict[str, float], example: str, positive: bool) -> float:
        match = _QUANTITY_RE.match(value) if isinstance(value, str) else None
        if isinstance(value, str) and value.strip().startswith("-"):
            self.fail(where, f"must not be negative, got {value!r}")
        if match is None or match.group(2) not in units:
            self.fail(where, f"expected a number and a unit like {example!r} (units: {', '.join(units)}), "
                             f"got {value!r}")
        amount = float(match.group(1)) * units[match.group(2)]
        if positive and amount <= 0:
            self.fail(where, f"must be > 0, got {value!r}")
        return amount

    def bandwidth(self, value: Any, where: str) -> float:
        return self.quantity(value, where, BANDWIDTH_UNITS, "1 Gbit/s", positive=True)

    def latency(self, value: Any, where: str) -> float:
        return self.quantity(value, where, LATENCY_UNITS, "0.5 ms", positive=False)


def _did_you_mean(word: str, choices: set[str]) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
