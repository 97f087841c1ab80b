"""Turn a split (who gets how many groups, columns, tokens) into a Plan with predicted times.

Every planner (ILP, baselines, brute force) builds its plans here, so they share one rank order:
the head device (rank 0: input, epilogue, output) first, then the others fastest first.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

from galaxy.compiler.cost.latency import predict
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.cost.throughput import s_per_request
from galaxy.compiler.ir.plan import Plan, StageSplit
from galaxy.compiler.ir.schedule import stage_schedule


@dataclass(frozen=True)
class Split:
    """A single-stage choice by device index: used devices, head, KV groups, columns, tokens."""

    used: tuple[int, ...]
    head: int
    groups: Mapping[int, int]
    columns: Mapping[int, int]
    tokens: Mapping[int, int]
    tiles: int = 0  # the baselines' plain collectives unless a planner chose tiles


def ring_order(table: CostTable, used: Iterable[int], head: int) -> tuple[int, ...]:
    """Head first, then the other used devices fastest first (ties: cluster order)."""
    speed = table.speed_order()
    return (head, *sorted((d for d in used if d != head), key=speed.index))


def stage_split(table: CostTable, ring: tuple[int, ...], ranks: tuple[int, ...], split: Split,
                first_layer: int, end_layer: int) -> StageSplit:
    """A hybrid-parallel stage over `ring` (devices, ring order) running layers first..end-1; its
    schedule knows its place in the pipeline from the layers (the first holds layer 0, the last
    the model's last layer)."""
    g = table.heads_per_group
    schedule = stage_schedule(len(ring), shape="hybrid", tiles=split.tiles, wire=table.wire_dtype,
                              first=first_layer == 0, last=end_layer == table.n_layers,
                              parallel=table.parallel_blocks)
    return StageSplit(
        ranks=ranks, first_layer=first_layer, end_layer=end_layer,
        heads_per_rank=tuple(split.groups.get(d, 0) * g for d in ring),
        kv_heads_per_rank=tuple(split.groups.get(d, 0) for d in ring),
        columns_per_rank=tuple(split.columns.get(d, 0) for d in ring),
        tokens_per_rank=tuple(split.tokens.get(d, 0) for d in ring),
        schedule=schedule)


def build_hmp_plan(table: CostTable, split: Split, solver: str, objective: str = "latency",
                   notes: tuple[str, ...] = ()) -> Plan:
    """A single-stage (plain HMP) plan over `split.used`, ranks in `ring_order`, not yet predicted."""
    ring = ring_order(table, split.used, split.head)
    stage = stage_split(table, ring, tuple(range(len(ring))), split, 0, table.n_layers)
    return Plan(model=table.model, cluster=table.cluster, devices=tuple(table.devices[d] for d in ring),
                stages=(stage,), solver=solver, objective=objective, notes=notes)


def hmp_plan(table: CostTable, split: Split, solver: str, objective: str = "latency",
             notes: tuple[str, ...] = ()) -> Plan:
    """`build_hmp_plan` with predicted latency and block times filled in."""
    return with_prediction(build_hmp_plan(table, split, solver, objective, notes), table)


def with_prediction(plan: Plan, table: CostTable) -> Plan:
    """Predicted latency and block times; throughput plans also get their time per request."""
    latency, blocks = predict(plan, table)
    per_request = s_per_request(plan, blocks) if plan.objective == "throughput" else None
    return replace(plan, predicted_latency_s=latency, predicted_blocks=blocks, predicted_s_per_request=per_request)
