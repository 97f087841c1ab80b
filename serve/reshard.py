"""Which weights each device needs for a new plan, and where each piece of them comes from.

    plan_moves(new_shards, devices, holdings, held_as, index=None) -> Moves

`new_shards[rank]` is what galaxy-compile would write for each rank of the new plan (the
coordinator lowers the plan from its copy of the model); `devices[rank]` the device of each
rank; `holdings[device]` what each device of the new group holds now (its shard under the plan
that ran, or the last one it rebuilt) and `held_as[device]` which (plan, rank) that shard is.
For every tensor of every new shard, `plan_moves` finds a source for each of its rows (or
columns): the device itself, else a peer of the new group (sent over gloo), else the coordinator
(sent with the join word). The result is one recipe per device for runtime/reshard.rebuild, the
pieces the coordinator sends, and every byte counted against a full reload.

How pieces are found, without knowing how lowering lays out its fused weights: by content.
Lowering builds a rank's weights from whole rows and columns of the model's projections (its q,
k and v rows, its MLP columns, interleaved heads regrouped, parallel blocks side by side), so a
row of a new shard is a row of some held shard whenever a device of the group held it before.
Rows are indexed by a sample of their elements (16 fixed positions per row length); runs of
consecutive rows from one source are then checked exactly (torch.equal), and for each tensor the
direction (rows or columns) that moves the fewest bytes wins. Tensors that are not matrices
(biases, norms, tables) are matched whole. What no device holds comes from the coordinator. The
rank checks the sha256 of everything it rebuilds, so even a wrong match could not serve.
Building the index is most of the work; `HoldingsIndex(holdings)` may be built once for every
switch from the same holdings (those of the devices not in the new group are skipped).
"""
from __future__ import annotations

import collections
import functools
import itertools
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import torch

from galaxy.runtime.reshard import HOST, PEER, SELF, tensor_sha256, units

_SAMPLES = 16  # elements compared per row when looking for it


@dataclass(frozen=True)
class MovedBytes:
    kept: int = 0  # already on the device that needs it
    peer: int = 0  # sent by another device of the group
    host: int = 0  # sent by the coordinator
    full: int = 0  # every new shard whole: what a full reload would move

    @property
    def moved(self) -> int:
        return self.peer + self.host

    def __add__(self, other: "MovedBytes") -> "MovedBytes":
        return MovedBytes(self.kept + other.kept, self.peer + other.peer, self.host + other.host,
                          self.full + other.full)

    def describe(self) -> str:
        share = f" ({100 * self.moved / self.full:.1f}% of a full reload)" if self.full else ""
        return (f"moved {_mib(self.moved)}{share}: {_mib(self.peer)} between devices, {_mib(self.host)} from "
                f"the coordinator; kept {_mib(self.kept)} in place; a full reload is {_mib(self.full)}")


@dataclass
class Moves:
    recipes: dict[str, dict]  # device -> runtime/reshard.py recipe
    host_pieces: dict[str, dict[str, torch.Tensor]]  # device -> pieces the coordinator sends it
    by_device: dict[str, MovedBytes] = field(default_factory=dict)

    @property
    def total(self) -> MovedBytes:
        return sum(self.by_device.values(), MovedBytes())


@dataclass
class _Run:
    """Units [start, start + length) of a new tensor, from `length` units of a source from `source_start`."""
    start: int
    device: str | None  # None: the coordinator
    name: str = ""
    source_start: int = 0
    length: int = 1


def plan_moves(new_shards: Mapping[int, Mapping[str, torch.Tensor]], devices: Sequence[str],
               holdings: Mapping[str, Mapping[str, torch.Tensor]], held_as: Mapping[str, dict],
               index: "HoldingsIndex | None" = None) -> Moves:
    index = index or HoldingsIndex(holdings)
    allowed = set(devices)
    rank_of = {device: rank for rank, device in enumerate(devices)}
    sends: dict[str, list] = collections.defaultdict(list)
    load: collections.Counter = collections.Counter()  # bytes each device is to send
    tags = itertools.count(1)
    moves = Moves({}, {})
    for rank, shard in sorted(new_shards.items()):
        device = devices[rank]
        tensors, pieces, counted = {}, {}, collections.Counter()
        for name, tensor in sorted(shard.items()):
            dim, runs = _best_runs(tensor, device, index, load, allowed)
            parts = []
            for k, run in enumerate(runs):
                piece = units(tensor).narrow(dim, run.start, run.length)
                size = _bytes(piece)
                if run.device is None:
                    key = f"{name}#{k}"
                    pieces[key] = piece.clone(memory_format=torch.contiguous_format)
                    parts.append([HOST, key])
                    counted["host"] += size
                elif run.device == device:
                    parts.append([SELF, run.name, run.source_start, run.source_start + run.length])
                    counted["kept"] += size
                else:
                    tag = next(tags)
                    parts.append([PEER, rank_of[run.device], tag, run.source_start, run.source_start + run.length])
                    sends[run.device].append([rank, tag, run.name, dim, run.source_start,
                                              run.source_start + run.length])
                    load[run.device] += size
                    counted["peer"] += size
            whole = len(parts) == 1 and parts[0][0] == SELF and dim == 0 \
                and holdings[device][parts[0][1]].shape == tensor.shape
            tensors[name] = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
                             "dim": dim, "parts": parts, "sha256": None if whole else tensor_sha256(tensor)}
        moves.recipes[device] = {"holds": dict(held_as.get(device, {})), "tensors": tensors, "sends": []}
        moves.host_pieces[device] = pieces
        moves.by_device[device] = MovedBytes(counted["kept"], counted["peer"], counted["host"],
                                             sum(_bytes(t) for t in shard.values()))
    for device, outgoing in sends.items():
        moves.recipes[device]["sends"] = outgoing
    return moves


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


class HoldingsIndex:
    """Where each row and column of the held tensors lies, by a sample of its elements."""

    def __init__(self, holdings: Mapping[str, Mapping[str, torch.Tensor]]):
        self.holdings = holdings
        self.keys: dict[tuple[str, str, int], list[bytes]] = {}
        self.units: dict[tuple, dict[bytes, list[tuple[str, str, int]]]] = collections.defaultdict(dict)
        self.wholes: dict[tuple, list[tuple[str, str]]] = collections.defaultdict(list)
        for device, shard in holdings.items():
            for name, tensor in shard.items():
                self.wholes[tensor.dtype, tuple(tensor.shape)].append((device, name))
                if tensor.dim() != 2:
                    continue
                for dim in (0, 1):
                    keys = unit_keys(tensor, dim)
                    self.keys[device, name, dim] = keys
                    table = self.units[dim, tensor.dtype, tensor.shape[1 - dim]]
                    for i, key in enumerate(keys):
                        table.setdefault(key, []).append((device, name, i))

    def tensor(self, device: str, name: str) -> torch.Tensor:
        return self.holdings[device][name]


def unit_keys(tensor: torch.Tensor, dim: int) -> list[bytes]:
    """One key per row (dim 0) or column (dim 1) of a matrix: its elements at fixed positions."""
    rows = tensor if dim == 0 else tensor.t()
    sample = rows[:, _positions(rows.shape[1])].contiguous()
    if not sample.numel():
        return [b""] * rows.shape[0]
    return [row.tobytes() for row in sample.view(torch.uint8).numpy()]


@functools.lru_cache(maxsize=None)
def _positions(length: int) -> torch.Tensor:
    if length <= _SAMPLES:
        return torch.arange(length)
    generator = torch.Generator().manual_seed(length)
    return torch.randperm(length, generator=generator)[:_SAMPLES].sort().values


def _best_runs(tensor: torch.Tensor, device: str, index: HoldingsIndex, load: collections.Counter,
               allowed: set[str]) -> tuple[int, list[_Run]]:
    """(dim, runs): where each slice of `tensor` comes from (devices in `allowed`), the direction
    that moves least."""
    whole = _whole(tensor, device, index, load, allowed)
    if whole is not None and (whole.device == device or tensor.dim() != 2):
        return 0, [whole]
    if tensor.dim() != 2:
        return 0, [whole or _Run(0, None, length=len(units(tensor)))]
    options = [(dim, _checked(tensor, dim, _runs(tensor, dim, device, index, load, allowed), index)) for dim in (0, 1)]
    if whole is not None:
        options.append((0, [whole]))

    def cost(option) -> tuple[int, int, int]:  # bytes moved, of them from the coordinator, pieces
        dim, runs = option
        unit = tensor.numel() // max(tensor.shape[dim], 1)
        moved = sum(r.length for r in runs if r.device != device)
        host = sum(r.length for r in runs if r.device is None)
        return moved * unit, host * unit, len(runs)
    return min(options, key=cost)


def _whole(tensor, device, index: HoldingsIndex, load, allowed: set[str]) -> _Run | None:
    """The whole tensor from a holder of an equal one: the device itself first, else the least loaded."""
    candidates = [c for c in index.wholes.get((tensor.dtype, tuple(tensor.shape)), []) if c[0] in allowed]
    mine = [c for c in candidates if c[0] == device]
    others = sorted((c for c in candidates if c[0] != device), key=lambda c: load[c[0]])
    for holder, name in mine + others:
        if torch.equal(index.tensor(holder, name), tensor):
            return _Run(0, holder, name, 0, len(units(tensor)))
    return None


def _runs(tensor: torch.Tensor, dim: int, device: str, index: HoldingsIndex, load, allowed: set[str]) -> list[_Run]:
    """Greedy runs along `dim`: extend the current source while its next unit matches."""
    table = index.units.get((dim, tensor.dtype, tensor.shape[1 - dim]), {})
    runs: list[_Run] = []
    current: _Run | None = None
    for i, key in enumerate(unit_keys(tensor, dim)):
        if current is not None:
            if current.device is None and key not in table:
                current.length += 1
                continue
            if current.device is not None:
                source = index.keys[current.device, current.name, dim]
                following = current.source_start + current.length
                if following < len(source) and source[following] == key:
                    current.length += 1
                    continue
        found = _choose(table.get(key, ()), device, load, allowed)
        current = _Run(i, None) if found is None else _Run(i, found[0], found[1], found[2])
        runs.append(current)
    return runs


def _choose(locations, device: str, load, allowed: set[str]) -> tuple[str, str, int] | None:
    best = None
    for location in locations:
        if location[0] == device:
            return location
        if location[0] in allowed and (best is None or load[location[0]] < load[best[0]]):
            best = location
    return best


def _checked(tensor: torch.Tensor, dim: int, runs: list[_Run], index: HoldingsIndex) -> list[_Run]:
    """Runs whose source is not exactly equal go to the coordinator; adjacent ones merge."""
    out: list[_Run] = []
    for run in runs:
        if run.device is not None:
            source = index.tensor(run.device, run.name).narrow(dim, run.source_start, run.length)
            if not torch.equal(source, tensor.narrow(dim, run.start, run.length)):
                run = _Run(run.start, None, length=run.length)
        if out and out[-1].device is None and run.device is None:
            out[-1].length += run.length
        else:
            out.append(run)
    return out
