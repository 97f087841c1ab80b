"""Objective "throughput": the plan that serves the most requests per second when they stream.

A single-stage plan serves one request at a time, so its time per request is its latency (the
ILP minimises it). A pipeline works on several requests at once and serves one per slot of its
busiest stage (cost/throughput.py); the pipeline DP minimises that bottleneck. We take whichever
predicts less time per request; on a tie the single stage (lower latency, fewer hand-offs).

A pipeline stage is a device group running HMP over its own ring, or one device alone
(EdgePipe-style); the DP searches groups of consecutive devices in speed order
(planner/pipeline_dp.py, planner/stage_groups.py).
"""
from __future__ import annotations

import logging

from galaxy.compiler.cost.throughput import stage_busy_s
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.planner.choose import noted
from galaxy.compiler.planner.explain import fmt_s

log = logging.getLogger(__name__)


def choose_for_throughput(single: Plan | None, pipe: Plan | None) -> Plan:
    """The plan with less predicted time per request, with a note saying why (one may be None)."""
    if pipe is None or len(pipe.stages) == 1:
        why = ("no pipeline of whole layers fits" if pipe is None else
               "the best pipeline of whole layers is a single stage")
        # The DP's single stage (a device group) stands in when the ILP found no plan.
        return noted(single or pipe, f"throughput: a single-stage plan, one request at a time: {why}")
    pipe_s = pipe.predicted_s_per_request
    busy = stage_busy_s(pipe, pipe.predicted_blocks)
    slowest = max(range(len(busy)), key=busy.__getitem__)
    pipe_text = (f"the {len(pipe.stages)}-stage pipeline serves a request every {fmt_s(pipe_s)} "
                 f"({1 / pipe_s:.2f}/s; busiest: stage {slowest} on "
                 f"{'+'.join(pipe.devices[r] for r in pipe.stages[slowest].ranks)}, "
                 f"stages busy {', '.join(fmt_s(b) for b in busy)}; latency {fmt_s(pipe.predicted_latency_s)})")
    if single is None:
        return noted(pipe, f"throughput: no single-stage plan fits; {pipe_text}")
    single_text = (f"the best single-stage plan ({single.world_size} device{'s' if single.world_size > 1 else ''}) "
                   f"one every {fmt_s(single.predicted_s_per_request)} (its latency)")
    if pipe_s < single.predicted_s_per_request:
        log.info("throughput objective: a %d-stage pipeline", len(pipe.stages))
        return noted(pipe, f"throughput: chose the pipeline: {pipe_text}; {single_text}")
    return noted(single, f"throughput: chose the single stage: {single_text}; {pipe_text}")
