"""The planner's candidates and the choice between them, for either objective.

The candidates: the best single stage (the ILP's hybrid plan, or sequence parallelism only when
every used device holds the model and it is predicted faster) and the pipeline DP's best
pipeline of device groups (planner/pipeline_dp.py). Either may not fit.

For one request a pipeline's stages run one after another, so for `latency` it wins only when
a single stage must take slow devices or slow links into every layer (because the fast devices
cannot hold the whole model) while a pipeline keeps them to a few layers. For `throughput`
(planner/throughput.py) a pipeline serves one request per slot of its busiest stage. Lower
predicted latency (or time per request) wins; on a tie the single stage (fewer hand-offs).
"""
from __future__ import annotations

import logging
from dataclasses import replace

from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.baselines import or_sequence_only
from galaxy.compiler.planner.explain import fmt_s
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan
from galaxy.compiler.planner.solve import plan_ilp

log = logging.getLogger(__name__)


def candidates(table: CostTable, objective: str, backend: str, time_limit_s: float, tile_choices: tuple[int, ...],
               sequence_only: bool = True) -> tuple[Plan | None, Plan | None, InfeasiblePlanError | None]:
    """(best single stage or None, the pipeline DP's plan or None, why no single stage fits);
    raises the single stage's error when neither fits."""
    single, single_error, pipe = None, None, None
    try:
        single = plan_ilp(table, objective, backend, time_limit_s, tile_choices)
        single = or_sequence_only(single, table, tile_choices) if sequence_only else single
    except InfeasiblePlanError as err:
        single_error = err
    try:
        pipe = pipeline_dp_plan(table, objective, tile_choices=tile_choices)
    except InfeasiblePlanError:
        if single is None:
            raise single_error from None
    return single, pipe, single_error


def choose_for_latency(single: Plan | None, pipe: Plan | None, single_error: Exception | None = None) -> Plan:
    """The plan with the lower predicted latency, with a note saying why (one may be None)."""
    if single is None:
        log.info("no single-stage plan fits; using a pipeline of whole layers")
        return noted(pipe, f"no single-stage plan fits ({single_error}); a pipeline of whole layers does")
    if pipe is None or len(pipe.stages) == 1 or pipe.predicted_latency_s >= single.predicted_latency_s:
        return single
    log.info("a %d-stage pipeline beats the single stage: %.1f ms vs %.1f ms", len(pipe.stages),
             pipe.predicted_latency_s * 1e3, single.predicted_latency_s * 1e3)
    return noted(pipe, f"latency: chose the {len(pipe.stages)}-stage pipeline, predicted "
                        f"{fmt_s(pipe.predicted_latency_s)} against {fmt_s(single.predicted_latency_s)} for the "
                        f"best single-stage plan ({single.solver}, {single.world_size} "
                        f"device{'s' if single.world_size > 1 else ''})")


# A plan on several devices must be predicted this much faster than the fastest device alone: the
# cost model is within about 15% on most benchmark rows, so a smaller predicted gain may be a loss
# on the devices themselves (docs/PERFORMANCE.md), and one device is simpler and never waits.
MIN_GAIN = 0.05


def prefer_one_device(plan: Plan, alone: Plan | None, min_gain: float = MIN_GAIN) -> Plan:
    """`alone` (the fastest device that holds the model) unless `plan` is predicted faster than
    it by more than `min_gain`."""
    if alone is None or plan.world_size == 1 or plan.predicted_latency_s < alone.predicted_latency_s * (1 - min_gain):
        return plan
    gain = 1 - plan.predicted_latency_s / alone.predicted_latency_s
    log.info("%d devices predict only %.1f%% faster than %s alone: one device", plan.world_size, 100 * gain,
             alone.devices[0])
    return noted(replace(alone, solver=plan.solver),
                 f"one device: the best plan on {plan.world_size} devices predicts {fmt_s(plan.predicted_latency_s)}, "
                 f"{100 * gain:.1f}% faster than {alone.devices[0]} alone ({fmt_s(alone.predicted_latency_s)}), "
                 f"less than the {100 * min_gain:.0f}% a multi-device plan must gain (within the cost model's error)")


def noted(plan: Plan, note: str) -> Plan:
    """`plan` with `note` first among its notes."""
    return replace(plan, notes=(note, *plan.notes))
