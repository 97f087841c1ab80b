"""The prefill plan of a generation bundle, chosen together with its decode plan.

    plan_for_generation(prefill, summary, decode_summary, cluster, max_len, model, ...) -> (Plan, Generation)

The ILP gives the prefill plan with the least prefill latency, but a request also pays for its
decode steps, and which decode layouts a prefill plan allows depends on it: keep needs its head
split, a pipeline or one device must fit beside its shares. When memory is tight, a prefill
pipeline can leave decode no better layout than that pipeline, while a head split over every
device would let decode run tensor-parallel. So the head splits a tensor-parallel decode wants
(even and in proportion to speed, hybrid and Megatron) are candidates beside the ILP's plan; each
gets its decode plan (planner/decode.py). The head split with the least predicted time for a
request that fills the context, TTFT + (max_len - P - 1) x TBT, replaces the ILP's plan only when
it is predicted at least `min_gain` faster (as planner/choose.py prefer_one_device: the cost
model's error on most benchmark rows), since it usually trades a slower first token for faster
steps.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from galaxy.compiler.capture.decode import LanguageModel
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.errors import GenerationError, InfeasiblePlanError
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.generation import Generation
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner.algorithms import choose_algorithms
from galaxy.compiler.planner.baselines import even_plan, megatron_plan, proportional_plan
from galaxy.compiler.planner.choose import MIN_GAIN
from galaxy.compiler.planner.decode import decode_steps, plan_generation
from galaxy.compiler.planner.explain import fmt_s

log = logging.getLogger(__name__)

# Prefill plans whose head split a tensor-parallel decode can keep, beside the ILP's.
HEAD_SPLITS: dict[str, Callable] = {"even": even_plan, "proportional": proportional_plan, "megatron": megatron_plan}


def request_s(generation: Generation) -> float:
    """A request that fills the context: the first token, then one step per further token."""
    return generation.predicted_ttft_s + decode_steps(generation.max_len, generation.prefill_len) * \
        generation.predicted_tbt_s


def plan_for_generation(prefill: Plan, summary: ModelSummary, decode_summary: ModelSummary, cluster: Cluster,
                        max_len: int, model: LanguageModel, layout: str | None = None,
                        min_gain: float = MIN_GAIN) -> tuple[Plan, Generation]:
    """The prefill plan (`prefill`, the ILP's, or a head split that decodes faster) and its decode
    plan; raises the ILP plan's GenerationError when no candidate has a decode layout that fits."""
    try:
        ilp = plan_generation(prefill, summary, decode_summary, cluster, max_len, model, layout)
        ilp_error = None
    except GenerationError as exc:
        ilp, ilp_error = None, exc
    best = None
    table = build_cost_table(summary, cluster, prefill.wire_dtype, cache_tokens=max_len)
    tried = []
    for name, make in HEAD_SPLITS.items() if table.n_devices > 1 else ():
        try:
            plan = choose_algorithms(make(table, "latency"), table)
            generation = plan_generation(plan, summary, decode_summary, cluster, max_len, model, layout)
        except (InfeasiblePlanError, GenerationError) as exc:
            log.debug("generation: the %s head split is not a candidate: %s", name, exc)
            continue
        tried.append((name, generation))
        if best is None or request_s(generation) < request_s(best[1]) - 1e-9:
            best = (plan, generation)
    if ilp is not None and (best is None or request_s(best[1]) >= (1 - min_gain) * request_s(ilp)):
        best = (prefill, ilp)
    if best is None:
        raise ilp_error
    plan, generation = best
    return plan, _with_note(generation, plan.solver, ilp, tried, ilp_error)


def _with_note(generation: Generation, solver: str, ilp: Generation | None, tried: list[tuple[str, Generation]],
               ilp_error: GenerationError | None) -> Generation:
    """`generation` with a first note saying which prefill plan it decodes after, and why."""
    tokens = generation.max_len - generation.prefill_len
    mine = (f"{fmt_s(request_s(generation))} for a request of {tokens} new tokens (TTFT "
            f"{fmt_s(generation.predicted_ttft_s)}, then {fmt_s(generation.predicted_tbt_s)} a token)")
    others = "; ".join(f"{name} {fmt_s(request_s(g))}" for name, g in tried if g is not generation)
    if ilp is generation:
        note = f"prefill: the {solver} plan, {mine}" + (f"; head splits for a tensor-parallel decode: {others}"
                                                        if others else "")
    elif ilp is None:
        note = (f"prefill: the {solver} head split, {mine}: the ILP's plan leaves decode no layout that fits "
                f"({' '.join(str(ilp_error).split())[:200]})")
    else:
        note = (f"prefill: the {solver} head split rather than the ILP's plan, {mine}, against "
                f"{fmt_s(request_s(ilp))} (TTFT {fmt_s(ilp.predicted_ttft_s)}, then {fmt_s(ilp.predicted_tbt_s)} a "
                f"token) for the ILP's" + (f"; other head splits: {others}" if others else ""))
    return replace(generation, notes=(note, *generation.notes))
