"""The ILP planner's driver: solve per device count k, keep the best, explain the choice."""
from __future__ import annotations

import logging
import time
from dataclasses import replace

from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import SolverError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.diagnose import infeasible_error
from galaxy.compiler.planner.explain import (block_note, device_notes, fmt_bytes, fmt_s, hopeless_devices,
                                             k_summary, overlap_note, replicated_bytes)
from galaxy.compiler.planner.ilp import KResult, solve_k
from galaxy.compiler.planner.search_space import TILE_CHOICES

log = logging.getLogger(__name__)

TIE_K_REL = 1e-6  # a plan with more devices must be faster by more than this to be chosen


def solve_per_k(table: CostTable, objective: str = "latency", backend: str = "cbc", time_limit_s: float = 60.0,
                tile_choices: tuple[int, ...] = TILE_CHOICES) -> list[KResult]:
    """The best plan for each device count k = 1..N (within one shared time budget)."""
    deadline = time.perf_counter() + time_limit_s
    hopeless = hopeless_devices(table)
    results: list[KResult] = []
    for k in range(1, table.n_devices + 1):
        remaining = deadline - time.perf_counter()
        if k > table.n_devices - len(hopeless):
            results.append(KResult(k, "infeasible"))
        elif remaining <= 0:
            results.append(KResult(k, "skipped (time limit)"))
        else:
            results.append(solve_k(table, k, tile_choices, backend, remaining, objective))
    log.info("ILP solve times: %s", ", ".join(f"k={r.k} {r.solve_s:.2f} s" for r in results))
    return results


def choose(results: list[KResult]) -> KResult | None:
    """The fastest plan; within TIE_K_REL of it, the one with fewest devices."""
    found = [r for r in results if r.plan is not None]
    if not found:
        return None
    best = min(r.latency_s for r in found)
    return next(r for r in found if r.latency_s <= best * (1 + TIE_K_REL))


def plan_ilp(table: CostTable, objective: str = "latency", backend: str = "cbc", time_limit_s: float = 60.0,
             tile_choices: tuple[int, ...] = TILE_CHOICES) -> Plan:
    start = time.perf_counter()
    results = solve_per_k(table, objective, backend, time_limit_s, tile_choices)
    chosen = choose(results)
    if chosen is None:
        if all(r.status == "infeasible" for r in results):
            left = max(1.0, time_limit_s - (time.perf_counter() - start))
            raise infeasible_error(table, backend, left)
        raise SolverError("no plan found within the time limit: "
                          + ", ".join(f"k={r.k} {r.status}" for r in results))
    return replace(chosen.plan, notes=tuple(ilp_notes(table, chosen, results, backend)))


def ilp_notes(table: CostTable, chosen: KResult, results: list[KResult], backend: str) -> list[str]:
    plan = chosen.plan
    hopeless = hopeless_devices(table)
    why_out: dict[int, str] = {}
    for d in range(table.n_devices):
        if d in hopeless:
            why_out[d] = (f"cannot hold the replicated part ({fmt_bytes(replicated_bytes(table))}: prologue, "
                          f"norms, buffers); it has {fmt_bytes(table.mem_bytes[d])}")
            continue
        more = [r for r in results if r.k > chosen.k and r.plan is not None]
        if any(table.devices[d] in r.plan.devices for r in more):
            alt = min((r for r in more if table.devices[d] in r.plan.devices), key=lambda r: r.latency_s)
            why_out[d] = (f"the best plan using it ({alt.k} devices) predicts {fmt_s(alt.latency_s)}, "
                          f"not better than {fmt_s(plan.predicted_latency_s)}: its share of compute saves less "
                          "than the extra ring step, link time and communication CPU cost")
        else:
            why_out[d] = "the best plan of every larger device count leaves it out too"
    status = "optimal" if chosen.status == "optimal" else chosen.status
    notes = [f"ilp ({backend}): {status}, chose {chosen.k} of {table.n_devices} devices; "
             + k_summary([(r.k, r.status, r.latency_s) for r in results]),
             overlap_note(plan), block_note(plan)]
    if chosen.status != "optimal":
        notes.append("the solver hit its time limit: this plan is the best found, and may differ between runs")
    return notes + device_notes(table, plan, why_out)
