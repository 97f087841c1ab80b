"""Re-planning a running cluster: the same planner, on the cluster as it is now.

    replan(summary, cluster, plan, devices, slowdown={}) -> Replan

galaxy-serve (serve/recovery.py) calls it when a device is lost (it is left out of `devices`, the
devices that still have a rank) or measured slower or faster than the plan assumed:
`slowdown[device]` is measured time / assumed time, so 4.0 means the device now computes at a
quarter of the rate the running plan was made with. Everything else comes from plan.json: the
model summary, the cluster the running plan was made for, its objective and wire dtype. A
slowdown divides a device's GEMM and attention rates (and its CPU share, the emulator's knob)
and multiplies the CPU it spends per byte sent: a busier CPU is slower at everything.

When the devices left cannot hold the model, the planner raises InfeasiblePlanError, whose
message and `shortfall_bytes_by_device` say which device lacks how much (planner/diagnose.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from galaxy.compiler.cost.latency import predict
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.cost.throughput import s_per_request
from galaxy.compiler.errors import PlanFileError
from galaxy.compiler.ir.cluster import Cluster, Device
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner import make_plan

# Baselines a user picks by name are repeated; a plan of the whole planner (its ILP's or the pipeline
# DP's, whichever it chose), or one written by hand ("manual"), is re-planned by the whole planner.
_REPEATED = ("single", "even", "megatron", "proportional", "sequence")


@dataclass(frozen=True)
class Replan:
    plan: Plan
    cluster: Cluster  # what it was made for: the devices left, at their measured rates
    # The running plan's predicted seconds (per request for a throughput plan) on that cluster,
    # None when it uses a device that is gone: what the new plan is to beat.
    current_predicted_s: float | None

    @property
    def predicted_s(self) -> float:
        """The new plan's figure of merit: seconds per request streaming, else latency."""
        return objective_s(self.plan)


def slowed(device: Device, factor: float) -> Device:
    """`device` running `factor` times slower (factor < 1: faster) than it was assumed to."""
    if factor <= 0:
        raise ValueError(f"slowdown of {device.name} must be > 0, not {factor}")
    return replace(device, flops_per_s=device.flops_per_s / factor,
                   attention_flops_per_s=device.attention_flops_per_s / factor,
                   cpu_share=device.cpu_share / factor,
                   comm_cpu_s_per_byte=device.comm_cpu_s_per_byte * factor)


def cluster_now(cluster: Cluster, devices: Sequence[str], slowdown: Mapping[str, float] | None = None) -> Cluster:
    """`cluster` with only `devices` (in the cluster's order), each slowed by its factor."""
    unknown = sorted(set(devices) - set(cluster.names))
    if unknown:
        raise PlanFileError(f"devices {unknown} are not in cluster {cluster.name} ({list(cluster.names)})")
    slowdown = slowdown or {}
    kept = tuple(slowed(d, slowdown.get(d.name, 1.0)) for d in cluster.devices if d.name in devices)
    if not kept:
        raise PlanFileError(f"no device of cluster {cluster.name} is left to plan for")
    return replace(cluster, devices=kept)


def replan(summary: ModelSummary, cluster: Cluster, plan: Plan, devices: Sequence[str],
           slowdown: Mapping[str, float] | None = None, time_limit_s: float = 30.0) -> Replan:
    """A plan for `devices` of `cluster` at their measured rates, with `plan`'s objective and wire
    dtype, by the whole planner (or the baseline `plan` came from)."""
    now = cluster_now(cluster, devices, slowdown)
    solver = plan.solver if plan.solver in _REPEATED else "ilp"
    new = make_plan(summary, now, objective=plan.objective, solver=solver, time_limit_s=time_limit_s,
                    wire_dtype=plan.wire_dtype)
    current = None
    if set(plan.devices) <= set(now.names):
        latency, blocks = predict(plan, build_cost_table(summary, now, plan.wire_dtype))
        current = s_per_request(plan, blocks) if plan.objective == "throughput" else latency
    return Replan(new, now, current)


def objective_s(plan: Plan) -> float:
    """What the planner minimised for `plan`: seconds per request streaming, or latency."""
    if plan.objective == "throughput" and plan.predicted_s_per_request is not None:
        return plan.predicted_s_per_request
    return plan.predicted_latency_s
