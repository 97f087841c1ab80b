"""The slow, obviously correct twin of the ILP: try every single-stage plan, keep the best.

Every device subset, every head in it, every tile count, every integer split of KV groups,
column units and tokens; memory checked with cost/memory.py, latency with `predict`. Ties go to
fewer devices, then the order of enumeration. Only for small instances (tests).
"""
from __future__ import annotations

from itertools import combinations
from math import comb
from typing import Iterator

from galaxy.compiler.cost.latency import predict
from galaxy.compiler.cost.memory import memory_shortfall_bytes
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.assemble import Split, build_hmp_plan, with_prediction
from galaxy.compiler.planner.search_space import TILE_CHOICES

MAX_CANDIDATES = 200_000


def compositions(total: int, parts: int) -> Iterator[tuple[int, ...]]:
    """Every tuple of `parts` non-negative ints summing to `total`."""
    if parts == 1:
        yield (total,)
        return
    for first in range(total + 1):
        for rest in compositions(total - first, parts - 1):
            yield (first, *rest)


def count_candidates(table: CostTable, tile_choices: tuple[int, ...]) -> int:
    n = table.n_devices

    def splits(total: int, k: int) -> int:
        return comb(total + k - 1, k - 1)

    return sum(comb(n, k) * k * len(tile_choices) * splits(table.kv_groups, k)
               * splits(table.column_units, k) * splits(table.tokens, k) for k in range(1, n + 1))


def brute_force_plan(table: CostTable, tile_choices: tuple[int, ...] = TILE_CHOICES,
                     objective: str = "latency") -> Plan:
    count = count_candidates(table, tile_choices)
    if count > MAX_CANDIDATES:
        raise ValueError(f"brute force would try {count} plans (limit {MAX_CANDIDATES}); use a smaller instance")
    best: tuple[float, Plan] | None = None
    unit = table.column_unit
    for k in range(1, table.n_devices + 1):
        for used in combinations(range(table.n_devices), k):
            for head in used:
                for tiles in tile_choices:
                    for g in compositions(table.kv_groups, k):
                        for c in compositions(table.column_units, k):
                            for x in compositions(table.tokens, k):
                                split = Split(used, head, dict(zip(used, g)),
                                              {d: ci * unit for d, ci in zip(used, c)}, dict(zip(used, x)), tiles)
                                plan = build_hmp_plan(table, split, "brute-force", objective)
                                if memory_shortfall_bytes(plan, table):
                                    continue
                                latency, _ = predict(plan, table)
                                if best is None or latency < best[0]:
                                    best = (latency, plan)
    if best is None:
        raise InfeasiblePlanError(f"no single-stage plan of {table.model} fits {table.cluster}", {})
    return with_prediction(best[1], table)
