"""Why no plan fits: which devices lack how much memory, and what would fit.

An elastic copy of the ILP's memory rows, `mem[d] <= capacity + slack[d]`, minimises the total
slack (then spreads it in proportion to capacity): the least memory the cluster lacks, by device.
"""
from __future__ import annotations

import math

import pulp

from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError, SolverError
from galaxy.compiler.planner.explain import fmt_bytes, hopeless_devices, replicated_bytes
from galaxy.compiler.planner.ilp import MIB, add_memory, add_split_vars, add_totals, add_usage, labels
from galaxy.compiler.planner.solvers import solve


def least_shortfall_bytes(table: CostTable, backend: str, time_limit_s: float) -> dict[str, int]:
    prob = pulp.LpProblem("galaxy_memory_shortfall", pulp.LpMinimize)
    v = add_split_vars(prob, table)
    add_totals(prob, table, v, k=None)
    add_usage(prob, table, v)
    slack = {d: prob.add_variable(f"slack[{d}]", 0) for d in range(table.n_devices)}
    add_memory(prob, table, v, slack)
    spread = prob.add_variable("spread", 0)
    for d, name in enumerate(labels(table)):
        prob += (spread >= slack[d] * (MIB / max(table.mem_bytes[d], 1)), f"spread[{name}]")
    prob += pulp.lpSum(slack.values()) + 1e-3 * spread
    status = solve(prob, backend, time_limit_s)
    if status not in ("optimal", "feasible (time limit)"):
        raise SolverError(f"memory diagnosis failed: {status}")
    return {table.devices[d]: math.ceil(s.value() * MIB) for d, s in slack.items() if s.value() * MIB >= 1}


def layers_that_fit(table: CostTable) -> int:
    """About how many layers fit on all devices that can take part (ignoring split granularity)."""
    able = [d for d in range(table.n_devices) if d not in hopeless_devices(table)]
    fixed = table.prologue_bytes + table.buffer_bytes
    free = sum(table.mem_bytes[d] - fixed for d in able) - table.epilogue_bytes \
        - table.kv_groups * table.act_bytes_per_group - table.columns * table.act_bytes_per_column \
        - table.tokens * table.act_bytes_per_token
    per_layer = table.kv_groups * table.weight_bytes_per_group + table.columns * table.weight_bytes_per_column \
        + len(able) * table.connective_bytes_per_layer
    return max(0, min(table.n_layers, int(free // per_layer))) if per_layer else table.n_layers


def infeasible_error(table: CostTable, backend: str = "cbc", time_limit_s: float = 30.0) -> InfeasiblePlanError:
    shortfall = least_shortfall_bytes(table, backend, time_limit_s)
    if not shortfall:
        raise SolverError("the solver found no plan although the memory suffices; raise the time limit")
    lacks = ", ".join(f"{name} lacks {fmt_bytes(b)}" for name, b in sorted(shortfall.items()))
    msg = (f"{table.model} does not fit on {table.cluster}: needs {fmt_bytes(sum(shortfall.values()))} more "
           f"in total; {lacks} (in the split that overflows least)")
    hopeless = hopeless_devices(table)
    if hopeless:
        rep = fmt_bytes(replicated_bytes(table))
        msg += "; " + ", ".join(f"{table.devices[d]} cannot hold even the replicated part ({rep}: embeddings, "
                                f"norms, buffers; it has {fmt_bytes(table.mem_bytes[d])})" for d in sorted(hopeless))
    msg += f"; about {layers_that_fit(table)} of {table.n_layers} layers would fit"
    return InfeasiblePlanError(msg, shortfall)
