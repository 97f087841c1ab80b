"""MILP backends behind one call: CBC (default, the binary PuLP ships) or HiGHS (highspy).

Options are fixed (one thread, no output), so a solve is deterministic unless it hits the time
limit. PuLP reports "Optimal" after a time limit too; `solution_status` reads `sol_status`.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import Iterator

import pulp

from galaxy.compiler.errors import SolverError

BACKENDS = ("cbc", "highs")


def make_solver(backend: str, time_limit_s: float) -> pulp.LpSolver:
    limit = max(1.0, float(time_limit_s))
    if backend == "cbc":
        path = pulp.PULP_CBC_CMD.pulp_cbc_path
        if not os.access(path, os.X_OK):
            path = shutil.which("cbc") or path
        return pulp.COIN_CMD(path=path, msg=False, timeLimit=limit, threads=1)
    if backend == "highs":
        return pulp.HiGHS(msg=False, timeLimit=limit, threads=1, log_to_console=False, random_seed=0)
    raise SolverError(f"unknown ILP backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def solution_status(prob: pulp.LpProblem) -> str:
    """optimal | feasible (time limit) | infeasible | no solution (time limit) | unbounded.

    CBC's presolve can prove infeasibility without a solution status (sol_status 0), so the
    problem status decides infeasibility; the solution status decides the rest.
    """
    if prob.status == pulp.LpStatusInfeasible:
        return "infeasible"
    return {
        pulp.LpSolutionOptimal: "optimal",
        pulp.LpSolutionIntegerFeasible: "feasible (time limit)",
        pulp.LpSolutionInfeasible: "infeasible",
        pulp.LpSolutionNoSolutionFound: "no solution (time limit)",
        pulp.LpSolutionUnbounded: "unbounded",
    }.get(prob.sol_status, f"unknown status {prob.sol_status}")


def solve(prob: pulp.LpProblem, backend: str, time_limit_s: float) -> str:
    """Solve in place and return `solution_status`. HiGHS prints a banner from C++ whatever its
    options say, so its solve runs with the process's stdout pointed at /dev/null."""
    solver = make_solver(backend, time_limit_s)
    with _quiet_stdout() if backend == "highs" else contextlib.nullcontext():
        prob.solve(solver)
    return solution_status(prob)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
