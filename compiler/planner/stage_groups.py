"""The device groups a pipeline stage may run on, each with its HMP split, layer time and memory cap.

A group is a contiguous run of the speed order (`table.speed_order()`) of at most `max_devices`
devices; its ring is that run, fastest first, so when it is the first stage its fastest device is
rank 0 (`assemble.ring_order` gives the same order). Every layer of the group is split the same way:

    KV groups, column units   greedy min-max of G[r] a[d] + cpu[r] (and C[r] U c[d] + cpu[r]): one
                              unit at a time to the rank it leaves fastest, which minimises the
                              attention (MLP) block's slowest rank exactly (cost/latency.py)
    tokens                    the better of a greedy min-max of x[r] k_con[d] (connective blocks)
                              and an even split (smallest chunk, so the shortest ring steps)
    tiles                     the count in `tile_choices` with the least layer time for that split

each candidate scored with `stage_layer_s`, the per-layer formula `predict` uses, so a group's
layer time is exactly what the plan will be predicted to take. The split ignores memory; the
group's cap is the most layers every rank holds with it (cost/memory.py `rank_memory_bytes`,
with the prologue for every rank of the first stage and the head's extras on its rank 0).
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Sequence

from galaxy.compiler.cost.collectives import collective_cpu_s
from galaxy.compiler.cost.latency import stage_layer_s
from galaxy.compiler.cost.memory import rank_memory_bytes
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.ir.plan import StageSplit
from galaxy.compiler.planner.assemble import Split, stage_split
from galaxy.compiler.planner.search_space import TILE_CHOICES
from galaxy.runtime.splits import split_sizes

MAX_GROUP_DEVICES = 4  # devices in one stage's group, at most: bounds the DP's pairs of groups


@dataclass(frozen=True)
class StageGroup:
    """One candidate stage: devices `ring` (positions start..end-1 of the speed order) and its split."""

    start: int
    end: int
    ring: tuple[int, ...]
    split: Split
    layer_s: float  # seconds per layer with `split`
    cap: int  # layers it can hold as a later stage
    cap_first: int  # layers it can hold as the first stage (prologue on every rank, head on ring[0])

    def stage(self, table: CostTable, ranks: tuple[int, ...], first_layer: int, end_layer: int) -> StageSplit:
        return stage_split(table, self.ring, ranks, self.split, first_layer, end_layer)

    def tokens(self) -> tuple[int, ...]:
        return tuple(self.split.tokens[d] for d in self.ring)


def stage_groups(table: CostTable, max_devices: int = MAX_GROUP_DEVICES,
                 tile_choices: tuple[int, ...] = TILE_CHOICES) -> list[StageGroup]:
    """Every group of at most `max_devices` consecutive devices of the speed order, by (start, end)."""
    order = table.speed_order()
    groups = []
    for start in range(len(order)):
        for end in range(start + 1, min(len(order), start + max_devices) + 1):
            ring = order[start:end]
            layer_s, split = group_split(table, ring, tile_choices)
            groups.append(StageGroup(start, end, ring, split, layer_s,
                                     max_layers(table, ring, split, first=False),
                                     max_layers(table, ring, split, first=True)))
    return groups


def group_split(table: CostTable, ring: tuple[int, ...],
                tile_choices: tuple[int, ...] = TILE_CHOICES) -> tuple[float, Split]:
    """(seconds per layer, split) of the split of one layer over `ring` in the module docstring."""
    cpu = [2 * collective_cpu_s(table, d, len(ring)) for d in ring]
    unit = table.column_unit
    groups = min_max_counts(table.kv_groups, [table.attention_s_per_group[d] for d in ring], cpu)
    units = min_max_counts(table.column_units, [unit * table.mlp_s_per_column[d] for d in ring], cpu)
    token_choices = (min_max_counts(table.tokens, [table.connective_s_per_token[d] for d in ring], [0.0] * len(ring)),
                     split_sizes(table.tokens, [1.0] * len(ring)))
    best: tuple[float, Split] | None = None
    for tokens in token_choices:
        for tiles in (tile_choices if len(ring) > 1 else (1,)):
            split = Split(used=ring, head=ring[0], groups=dict(zip(ring, groups)),
                          columns={d: u * unit for d, u in zip(ring, units)}, tokens=dict(zip(ring, tokens)),
                          tiles=tiles)
            seconds = _layer_s(table, ring, split)
            if best is None or seconds < best[0]:
                best = (seconds, split)
    return best


def min_max_counts(total: int, unit_s: Sequence[float], base_s: Sequence[float]) -> list[int]:
    """Integer counts summing to `total` that minimise max_r base_s[r] + counts[r] unit_s[r] (greedy,
    exact for this min-max); ties go to the earlier rank."""
    counts = [0] * len(unit_s)
    heap = [(base + unit, r) for r, (base, unit) in enumerate(zip(base_s, unit_s))]
    heapq.heapify(heap)
    for _ in range(total):
        _, r = heapq.heappop(heap)
        counts[r] += 1
        heapq.heappush(heap, (base_s[r] + (counts[r] + 1) * unit_s[r], r))
    return counts


def max_layers(table: CostTable, ring: tuple[int, ...], split: Split, first: bool) -> int:
    """The most layers (up to the model's) every rank of `ring` holds with `split`."""
    most = table.n_layers
    for d in ring:
        def need(layers: int) -> int:
            return rank_memory_bytes(table, layers, split.groups[d], split.columns[d], split.tokens[d],
                                     first_stage=first, head=first and d == ring[0])
        per_layer, fixed = need(1) - need(0), need(0)
        room = table.mem_bytes[d] - fixed
        fits = (room // per_layer if per_layer else table.n_layers) if room >= 0 else 0
        most = min(most, fits)
    return most


def _layer_s(table: CostTable, ring: tuple[int, ...], split: Split) -> float:
    return stage_layer_s(table, stage_split(table, ring, tuple(range(len(ring))), split, 0, 1), ring)
