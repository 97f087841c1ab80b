"""Pipelines of whole layers whose stages are device groups running HMP, by DP over stage boundaries.

Search space: the groups of `stage_groups.py` (runs of at most MAX_GROUP_DEVICES consecutive
devices of the speed order, each with its fixed HMP split, layer time t[g] and memory caps). A
pipeline is a sequence of disjoint groups in speed order (any device may be skipped), each running
a contiguous range of at least one layer within its cap; the first group's fastest device is
rank 0 (input, prologue, head). One-device groups are EdgePipe's stages. Every term is the
block time cost/latency.py gives that plan's schedule (h = rank 0, the first device of f):

    own(f, n)      = enter(f) + n t[f]              (prologue and SCATTER, or REP alone; the layers)
    out(g)         = send(g)                        (SEND: g's leader gathers the hidden states)
    transfer(p, g) = recv(leader of p -> g)         (RECV: the whole hidden states to every rank of g)
    ends(f, z)     = out(f) + E[h] + recv(leader of z -> h)   (the head's inputs back to rank 0)
                     or, for the one stage f, gather(f) + E[h]  (GATHER by tokens to rank 0)

    latency    = own(f, n_0) + ends(f, z) + sum_{i>0} (transfer(g_{i-1}, g_i) + n_i t[g_i] + out(g_i))
    throughput = max(own(f, n_0) + ends(f, z), max_{i>0} transfer(g_{i-1}, g_i) + n_i t[g_i] + out(g_i))
                 (the busiest stage; stage 0 also runs the head and waits for its inputs: cost/throughput.py)

DP, once per first group f: chain[g][r] = the least sum (latency) or max (throughput) of the later
stages' terms over chains of groups after f that end in g and hold r layers:

    chain[f][0] = 0;  chain[g][r] = min over p (f, or a group between f and g), n in 1..cap[g]:
                                    chain[p][r - n] (+ | max) (transfer(p, g) + out(g) + n t[g])

and the plan is the least own(f, n_0) (+ | max) ends(f, z) ... over n_0 and the last group z, with
r = L - n_0 (the caps depend only on a stage's layer count, so one DP serves every n_0). For each
pair (p, g) the min over n is a sliding-window minimum over r (`_window`), so a first group costs
O(pairs of groups x L): about 0.05 s for 8 devices and 80 layers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Iterator

from galaxy.compiler.cost.latency import head_receive_s, stage_enter_s, stage_exit_s
from galaxy.compiler.cost.memory import rank_memory_bytes
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError, SolverError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.assemble import with_prediction
from galaxy.compiler.planner.explain import fmt_bytes, fmt_s
from galaxy.compiler.planner.search_space import TILE_CHOICES
from galaxy.compiler.planner.stage_groups import MAX_GROUP_DEVICES, StageGroup, stage_groups

log = logging.getLogger(__name__)

INF = float("inf")


@dataclass(frozen=True)
class PipelineChoice:
    """The DP's answer: `stages` as (index into `groups`, layers), and its own estimate of the objective."""

    groups: tuple[StageGroup, ...]
    stages: tuple[tuple[int, int], ...]
    estimate_s: float


@dataclass
class _Chain:
    cost: list[float]  # by layers r held after the first stage
    back: list[tuple[int, int] | None]  # (previous group, this group's layers)


def pipeline_dp_plan(table: CostTable, objective: str = "latency", max_group_devices: int = MAX_GROUP_DEVICES,
                     tile_choices: tuple[int, ...] = TILE_CHOICES) -> Plan:
    choice = search_pipeline(table, objective, max_group_devices, tile_choices)
    plan = build_pipeline_plan(table, choice, objective)
    got = plan.predicted_s_per_request if objective == "throughput" else plan.predicted_latency_s
    if abs(got - choice.estimate_s) > 1e-9 * max(got, 1e-12):
        raise SolverError(f"pipeline DP estimate {choice.estimate_s!r} s differs from predict() {got!r} s: "
                          "its terms are out of date with cost/latency.py")
    return plan


def search_pipeline(table: CostTable, objective: str = "latency", max_group_devices: int = MAX_GROUP_DEVICES,
                    tile_choices: tuple[int, ...] = TILE_CHOICES) -> PipelineChoice:
    """The best pipeline in the search space of the module docstring."""
    groups = tuple(stage_groups(table, max_group_devices, tile_choices))
    transfers: dict[tuple[int, int], float] = {}
    best: PipelineChoice | None = None
    for fi, first in enumerate(groups):
        if first.cap_first < 1:
            continue
        chains = _chains(table, groups, fi, objective, transfers)
        for cost, n0, last in _finishes(table, groups, fi, chains, objective):
            if best is None or cost < best.estimate_s:
                later = _path(chains, last, table.n_layers - n0)
                best = PipelineChoice(groups, ((fi, n0), *later), cost)
    if best is None:
        raise _no_pipeline(table)
    log.info("pipeline DP (%s): %d stages on %s, %.4f s", objective, len(best.stages),
             ", ".join("+".join(table.devices[d] for d in groups[g].ring) for g, _ in best.stages), best.estimate_s)
    return best


def _chains(table: CostTable, groups: tuple[StageGroup, ...], fi: int, objective: str,
            transfers: dict[tuple[int, int], float]) -> dict[int, _Chain]:
    """chain[g] for every group g after the first group `fi` (the DP of the module docstring)."""
    L = table.n_layers
    chains = {fi: _Chain([0.0] + [INF] * L, [None] * (L + 1))}
    for gi, group in enumerate(groups):
        if group.start < groups[fi].end:
            continue
        cost, back = [INF] * (L + 1), [None] * (L + 1)
        for pi, chain in chains.items():
            if groups[pi].end > group.start:
                continue
            if (pi, gi) not in transfers:
                later = group.stage(table, tuple(range(len(group.ring))), 1, table.n_layers)
                transfers[pi, gi] = (stage_enter_s(table, later, group.ring, previous=groups[pi].ring)
                                     + stage_exit_s(table, later, group.ring))
            values, layers = _window(chain.cost, transfers[pi, gi], group.layer_s, group.cap, objective)
            for r in range(1, L + 1):
                if values[r] < cost[r]:
                    cost[r], back[r] = values[r], (pi, layers[r])
        chains[gi] = _Chain(cost, back)
    return chains


def _window(prev: list[float], enter_s: float, layer_s: float, cap: int, objective: str
            ) -> tuple[list[float], list[int]]:
    """out[r] = min over n in 1..min(cap, r) of prev[r - n] (+ | max) (enter_s + n layer_s), and that n.

    Latency: prev[r'] - r' layer_s is a sliding-window minimum (a deque of increasing keys).
    Throughput: a candidate r' is dominated by a later one with prev no larger, so the kept ones
    have increasing prev and decreasing stage time; the best is where the two cross (bisection).
    """
    size = len(prev)
    out, arg = [INF] * size, [0] * size
    kept: list[int] = []
    head = 0
    for r in range(1, size):
        new = r - 1
        if prev[new] < INF:
            key = _key(prev, new, layer_s, objective)
            while len(kept) > head and _key(prev, kept[-1], layer_s, objective) >= key:
                kept.pop()
            kept.append(new)
        while head < len(kept) and kept[head] < r - cap:
            head += 1
        if head == len(kept):
            continue
        if objective == "throughput":
            best = _crossing(prev, kept, head, r, enter_s, layer_s)
            out[r] = max(prev[best], enter_s + (r - best) * layer_s)
        else:
            best = kept[head]
            out[r] = prev[best] + enter_s + (r - best) * layer_s
        arg[r] = r - best
    return out, arg


def _key(prev: list[float], r: int, layer_s: float, objective: str) -> float:
    return prev[r] if objective == "throughput" else prev[r] - r * layer_s


def _crossing(prev: list[float], kept: list[int], head: int, r: int, enter_s: float, layer_s: float) -> int:
    """Among kept[head:] (prev increasing, stage time decreasing) the r' with the least max of both."""
    lo, hi = head, len(kept) - 1
    while lo < hi:  # first index where prev reaches the stage time
        mid = (lo + hi) // 2
        if prev[kept[mid]] >= enter_s + (r - kept[mid]) * layer_s:
            hi = mid
        else:
            lo = mid + 1
    options = [kept[lo]] + ([kept[lo - 1]] if lo > head else [])
    return min(options, key=lambda c: (max(prev[c], enter_s + (r - c) * layer_s), -c))


def _finishes(table: CostTable, groups: tuple[StageGroup, ...], fi: int, chains: dict[int, _Chain],
              objective: str) -> Iterator[tuple[float, int, int]]:
    """(objective, first-stage layers, last group) of every pipeline starting with group `fi`."""
    first, L = groups[fi], table.n_layers
    head, ranks = first.ring[0], tuple(range(len(first.ring)))
    alone = first.stage(table, ranks, 0, L)
    leading = first.stage(table, ranks, 0, 1) if L > 1 else alone
    enter = stage_enter_s(table, leading, first.ring)  # the prologue and SCATTER (or REP), alone or not
    alone_ends = stage_exit_s(table, alone, first.ring) + table.epilogue_s[head]
    ends = {gi: stage_exit_s(table, leading, first.ring) + table.epilogue_s[head]
            + head_receive_s(table, head, groups[gi].ring[0], table.wire_dtype) for gi in chains if gi != fi}
    for n0 in range(1, min(first.cap_first, L) + 1):
        own = enter + n0 * first.layer_s
        if n0 == L:
            yield own + alone_ends, L, fi
            continue
        for gi, chain in chains.items():
            later = chain.cost[L - n0]
            if gi == fi or later == INF:
                continue
            stage0 = own + ends[gi]
            cost = max(stage0, later) if objective == "throughput" else stage0 + later
            yield cost, n0, gi


def _path(chains: dict[int, _Chain], gi: int, r: int) -> tuple[tuple[int, int], ...]:
    """(group, layers) of the stages after the first, first to last, of the chain ending in (gi, r)."""
    path = []
    while chains[gi].back[r] is not None:
        prev, n = chains[gi].back[r]
        path.append((gi, n))
        gi, r = prev, r - n
    return tuple(path[::-1])


def build_pipeline_plan(table: CostTable, choice: PipelineChoice, objective: str) -> Plan:
    """The Plan of `choice`: ranks numbered stage by stage, each group's ring in its order; predicted."""
    stages, devices, first = [], [], 0
    for gi, layers in choice.stages:
        group = choice.groups[gi]
        ranks = tuple(range(len(devices), len(devices) + len(group.ring)))
        stages.append(group.stage(table, ranks, first, first + layers))
        devices.extend(table.devices[d] for d in group.ring)
        first += layers
    plan = Plan(model=table.model, cluster=table.cluster, devices=tuple(devices), stages=tuple(stages),
                solver="pipeline-dp", objective=objective)
    return replace(with_prediction(plan, table), notes=tuple(_notes(table, choice, objective)))


def _notes(table: CostTable, choice: PipelineChoice, objective: str) -> list[str]:
    notes = [f"pipeline DP ({objective}): stages on groups of 1-{max(len(g.ring) for g in choice.groups)} consecutive devices in speed order, "
             f"{len(choice.groups)} candidate groups, each HMP-split for its least layer time; "
             f"best {fmt_s(choice.estimate_s)}" + (" per request" if objective == "throughput" else "")]
    first = 0
    for i, (gi, layers) in enumerate(choice.stages):
        group = choice.groups[gi]
        names = "+".join(table.devices[d] for d in group.ring)
        cap = group.cap_first if i == 0 else group.cap
        what = "HMP over its ring" if len(group.ring) > 1 else "alone"
        notes.append(f"stage {i}: {names} runs layers {first}-{first + layers - 1} ({what}, "
                     f"{fmt_s(group.layer_s)} a layer; its memory holds {cap} of {table.n_layers})")
        first += layers
    return notes


def _no_pipeline(table: CostTable) -> InfeasiblePlanError:
    need = rank_memory_bytes(table, 1, table.kv_groups, table.columns, table.tokens, False, False)
    shortfall = {name: need - table.mem_bytes[d] for d, name in enumerate(table.devices) if table.mem_bytes[d] < need}
    return InfeasiblePlanError(f"no pipeline of whole layers fits {table.model} on {table.cluster}: one layer needs "
                               f"{fmt_bytes(need)} on a device alone, and no groups of devices hold them all",
                               shortfall)
