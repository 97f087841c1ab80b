"""EdgePipe-style baseline: whole layers in contiguous stages, one device per stage, by DP.

Devices are taken in speed order (any may be skipped); the first stage's device is rank 0
(prologue, epilogue, input and output). With d_i the device of stage i and n_i its layers, the
terms are those of `cost/latency.py` for one-rank stages:

    stage(d, n)     = n (Gtot a[d] + columns c[d] + S k_con[d])
    transfer(p, d)  = alpha[p][d] + beta[p][d] S b + kappa[d] S b
    ends(f, l)      = P[f] + E[f] + (alpha[l][f] + beta[l][f] S b + kappa[f] S b  if l != f)

    latency    = ends(d_0, d_last) + sum_i stage(d_i, n_i) + sum_{i>0} transfer(d_{i-1}, d_i)
    throughput = max(stage_0 + ends(d_0, d_last), max_{i>0} transfer_i + stage_i)   (bottleneck:
                 rank 0 runs the prologue, its layers and the head of every request; cost/throughput.py)

DP over (first device f, last device j, layers placed l): best[j][l] = min over earlier i and
l' < l of best[i][l'] (+ or max) transfer(i, j) + stage(j, l - l'), subject to each device's
memory (cost/memory.py) for the layers it holds. For throughput the first stage's term also
holds the head, which depends on the last device, so the DP runs once per first-stage size n_0.
"""
from __future__ import annotations

from dataclasses import dataclass

from galaxy.compiler.cost.memory import rank_memory_bytes
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan, StageSplit
from galaxy.compiler.planner.assemble import with_prediction
from galaxy.compiler.planner.explain import fmt_bytes


@dataclass(frozen=True)
class _Cell:
    cost: float
    prev: tuple[int, int] | None  # (device, layers placed) of the stage before


def layer_s(table: CostTable, d: int) -> float:
    return (table.kv_groups * table.attention_s_per_group[d] + table.columns * table.mlp_s_per_column[d]
            + table.tokens * table.connective_s_per_token[d])


def max_layers(table: CostTable, d: int, first: bool) -> int:
    def fits(n: int) -> bool:
        return rank_memory_bytes(table, n, table.kv_groups, table.columns, table.tokens, first, first) \
            <= table.mem_bytes[d]
    n = 0
    while n < table.n_layers and fits(n + 1):
        n += 1
    return n


def pipeline_dp_plan(table: CostTable, objective: str = "latency") -> Plan:
    L, order = table.n_layers, table.speed_order()
    best_cost, best_path = float("inf"), None
    for fi, f in enumerate(order):
        cap = {d: max_layers(table, d, d == f) for d in order}
        for seeds, first_s in _seeds(table, f, cap[f], objective):
            cells = _extend(table, order, fi, cap, seeds, objective)
            for (j, placed), cell in sorted(cells.items()):
                if placed != L:
                    continue
                ends = table.epilogue_s[f] + (0.0 if j == f else _transfer_s(table, j, f))
                cost = max(cell.cost, first_s + ends) if objective == "throughput" else cell.cost + ends
                if cost < best_cost:
                    best_cost, best_path = cost, _path(cells, (j, L))
    if best_path is None:
        need = rank_memory_bytes(table, 1, table.kv_groups, table.columns, table.tokens, False, False)
        shortfall = {name: need - table.mem_bytes[d] for d, name in enumerate(table.devices)
                     if table.mem_bytes[d] < need}
        raise InfeasiblePlanError(f"no pipeline of whole layers fits {table.model} on {table.cluster}: one layer "
                                  f"needs {fmt_bytes(need)} on a device, and together the devices that hold one "
                                  "do not hold them all", shortfall)
    return _plan(table, best_path, objective)


def _transfer_s(table: CostTable, p: int, d: int) -> float:
    full = table.tokens * table.token_wire_bytes
    return table.alpha_s[p][d] + table.beta_s_per_byte[p][d] * full + table.comm_cpu_s_per_byte[d] * full


def _seeds(table: CostTable, f: int, cap: int, objective: str):
    """(first-stage cells, first stage's own seconds) to start the DP from.

    Latency: one DP whose cells carry the first stage's time. Throughput: one DP per first-stage
    size n, its cells carrying only the later stages' bottleneck; the first stage's time is
    added to the head's at the end.
    """
    own = [table.prologue_s[f] + n * layer_s(table, f) for n in range(cap + 1)]
    if objective == "throughput":
        for n in range(1, cap + 1):
            yield {(f, n): _Cell(0.0, None)}, own[n]
    else:
        yield {(f, n): _Cell(own[n], None) for n in range(1, cap + 1)}, 0.0


def _extend(table: CostTable, order: list[int], fi: int, cap: dict[int, int], cells: dict[tuple[int, int], _Cell],
            objective: str) -> dict[tuple[int, int], _Cell]:
    """Add later stages, devices in speed order after the first: cells keyed (last device, layers placed)."""
    combine = max if objective == "throughput" else (lambda x, y: x + y)
    position = {d: i for i, d in enumerate(order)}
    for ji in range(fi + 1, len(order)):
        j = order[ji]
        for (i, placed), cell in sorted(cells.items()):
            if position[i] >= ji:
                continue
            for n in range(1, min(cap[j], table.n_layers - placed) + 1):
                cost = combine(cell.cost, _transfer_s(table, i, j) + n * layer_s(table, j))
                key = (j, placed + n)
                if key not in cells or cost < cells[key].cost:
                    cells[key] = _Cell(cost, (i, placed))
    return cells


def _path(cells: dict[tuple[int, int], _Cell], end: tuple[int, int]) -> list[tuple[int, int]]:
    """[(device, layers placed after its stage), ...] from the first stage to the last."""
    path, key = [], end
    while key is not None:
        path.append(key)
        key = cells[key].prev
    return path[::-1]


def _plan(table: CostTable, path: list[tuple[int, int]], objective: str) -> Plan:
    stages, first = [], 0
    for rank, (d, end) in enumerate(path):
        stages.append(StageSplit(ranks=(rank,), first_layer=first, end_layer=end,
                                 heads_per_rank=(table.heads,), kv_heads_per_rank=(table.kv_groups,),
                                 columns_per_rank=(table.columns,), tokens_per_rank=(table.tokens,)))
        first = end
    notes = tuple(f"stage {i}: {table.devices[d]} runs layers {s.first_layer}-{s.end_layer - 1}"
                  for i, ((d, _), s) in enumerate(zip(path, stages)))
    plan = Plan(model=table.model, cluster=table.cluster, devices=tuple(table.devices[d] for d, _ in path),
                stages=tuple(stages), solver="pipeline-dp", objective=objective, wire_dtype=table.wire_dtype,
                notes=notes)
    return with_prediction(plan, table)
