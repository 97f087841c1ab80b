"""The plans a benchmark compares, side by side, for one model on one cluster.

Every variant is a Plan, so they all go through the same lowering, codegen and runtime; only
the split, the overlap and the connective strategy differ.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.planner import make_plan
from galaxy.compiler.ir.schedule import stage_schedule
from galaxy.compiler.planner.assemble import with_prediction
from galaxy.compiler.planner.baselines import sequence_plan
from galaxy.compiler.planner.pipeline_dp import pipeline_dp_plan


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    make: Callable[[ModelSummary, Cluster], Plan]


def _edgepipe(summary: ModelSummary, cluster: Cluster) -> Plan:
    """EdgePipe as published: one device per stage (the planner's own DP also tries device groups)."""
    return pipeline_dp_plan(build_cost_table(summary, cluster), max_group_devices=1)


def _sequence_gather(summary: ModelSummary, cluster: Cluster) -> Plan:
    """The sequence baseline held to gathering keys and values (KVAG, its best tile count)."""
    return sequence_plan(build_cost_table(summary, cluster), key_value_ops=("KVAG",))


def _sequence_attend(algorithm: str) -> Callable[[ModelSummary, Cluster], Plan]:
    """`_sequence_gather`'s plan (same devices, same tokens) attending to keys and values as they
    arrive (KVATT over `algorithm`) instead: the two actions measured one against the other."""
    def make(summary: ModelSummary, cluster: Cluster) -> Plan:
        table = build_cost_table(summary, cluster)
        plan = _sequence_gather(summary, cluster)
        stage = plan.stages[0]
        schedule = stage_schedule(len(stage.ranks), shape="sequence", wire=table.wire_dtype, key_values="KVATT",
                                  algorithm=algorithm, parallel=table.parallel_blocks)
        return with_prediction(replace(plan, stages=(replace(stage, schedule=schedule),)), table)
    return make


def _galaxy_fp16(summary: ModelSummary, cluster: Cluster) -> Plan:
    return make_plan(summary, cluster, wire_dtype="float16")


VARIANTS = {v.name: v for v in (
    Variant("local", "fastest device alone", lambda s, c: make_plan(s, c, solver="single")),
    Variant("megatron", "even TP, all-reduce, replicated connective, no overlap",
            lambda s, c: make_plan(s, c, solver="megatron")),
    Variant("proportional", "simple uneven HMP: shares in proportion to GFLOP/s, no overlap",
            lambda s, c: make_plan(s, c, solver="proportional")),
    Variant("sequence", "sequence parallelism only: every weight everywhere, keys/values all-gathered",
            lambda s, c: make_plan(s, c, solver="sequence")),
    Variant("sequence-gather", "sequence parallelism only, keys/values all-gathered (KVAG) before one SDPA",
            _sequence_gather),
    Variant("sequence-attend", "sequence-gather's split, keys/values sent directly and attended as they arrive "
            "(KVATT(direct), online softmax)", _sequence_attend("direct")),
    Variant("sequence-attend-ring", "sequence-gather's split, keys/values round a ring, attended as they arrive "
            "(KVATT, online softmax)", _sequence_attend("ring")),
    Variant("edgepipe", "pipeline of layer ranges, one device per stage (DP)", _edgepipe),
    Variant("galaxy-no-overlap", "Galaxy's hybrid (HMP) plan (ILP, or DP pipeline of HMP stages), plain collectives",
            lambda s, c: make_plan(s, c, tile_choices=(1,), sequence_only=False)),
    Variant("galaxy-hmp", "Galaxy's hybrid (HMP) plan (ILP, or DP pipeline of HMP stages) with tile-based overlap",
            lambda s, c: make_plan(s, c, sequence_only=False)),
    Variant("galaxy", "Galaxy's planner: the HMP plan or, if faster and it fits, sequence parallelism only",
            lambda s, c: make_plan(s, c)),
    Variant("galaxy-fp16", "Galaxy with fp16 activations on the wire (max error stated)", _galaxy_fp16),
)}


def with_bandwidth(cluster: Cluster, bits_per_s: float) -> Cluster:
    """The same devices with every link set to `bits_per_s`."""
    link = replace(cluster.default_link, bandwidth_bytes_per_s=bits_per_s / 8)
    return replace(cluster, name=f"{cluster.name}@{bits_per_s / 1e6:g}Mbit", default_link=link,
                   link_overrides=())
