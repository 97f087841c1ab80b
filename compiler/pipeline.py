"""The compiler, one line per phase: MODEL + cluster -> plan -> bundle of per-device modules."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from galaxy.compiler.capture.load import load_model
from galaxy.compiler.capture.trace import CapturedModel, capture
from galaxy.compiler.codegen.bundle import check_output_dir, write_bundle
from galaxy.compiler.codegen.render import render_rank
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.cluster_file import default_cluster_path, load_cluster
from galaxy.compiler.ir.graph import TransformerGraph
from galaxy.compiler.ir.plan import Plan, validate_plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.lower.shard import lower
from galaxy.compiler.passes.recognise import recognise
from galaxy.compiler.passes.summarise import summarise
from galaxy.compiler.passes.wire_error import expected_wire_error
from galaxy.compiler.planner import make_plan
from galaxy.compiler.report.document import PlanDocument

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompileOptions:
    cluster: str | None = None  # TOML path; None = the bundled default
    out_dir: str | None = "bundle"
    plan_only: bool = False
    plan: str | None = None  # use this plan.json instead of planning
    objective: str = "latency"
    solver: str = "ilp"  # one of planner.SOLVERS
    wire: str = "float32"  # dtype of activations on the wire: float32 | bfloat16 | float16
    size: str | None = None  # model.py size knob
    seq_len: int | None = None
    capture: str = "export"  # export | symbolic


@dataclass(frozen=True)
class CompileResult:
    plan: Plan
    summary: ModelSummary
    cluster: Cluster
    graph: TransformerGraph
    bundle_dir: Path | None
    wire_error: dict[str, float]  # expected max abs error of each output ({} for a float32 wire)


def compile_model(source: str, options: CompileOptions = CompileOptions()) -> CompileResult:
    cluster = load_cluster(options.cluster or default_cluster_path())
    if not options.plan_only and options.out_dir is not None:
        check_output_dir(options.out_dir)  # before minutes of work, not after
    captured, graph, summary = capture_model(source, options.size, options.seq_len, options.capture)
    log.info("[4/6] planning for %s", cluster.name)
    plan = _plan(summary, cluster, options)
    wire_error = expected_wire_error(captured, graph, plan)
    if wire_error:
        log.info("wire %s: expected max abs error %s", plan.wire_dtype,
                 ", ".join(f"{k} {v:.2g}" for k, v in sorted(wire_error.items())))
    if options.plan_only or options.out_dir is None:
        return CompileResult(plan, summary, cluster, graph, None, wire_error)
    bundle = write_plan_bundle(options.out_dir, plan, summary, graph, captured, model_label(source), cluster,
                               wire_error, model_options(options, source))
    return CompileResult(plan, summary, cluster, graph, bundle, wire_error)


def model_label(source: str | Path) -> str:
    """How a bundle names its model: the file or folder name, never the host path (the same compile
    in two checkouts gives the same bytes)."""
    path = Path(source)
    return f"{path.parent.name}/{path.name}" if path.name == "config.json" and path.parent.name else path.name


def model_options(options: CompileOptions, source: str | Path) -> dict:
    """How MODEL was loaded and captured, for plan.json: what galaxy-serve needs to capture it again
    and re-plan when a device is lost (serve/recovery.py). The model is found from the bundle by a
    relative path, which two checkouts share, never by a host path."""
    relative = os.path.relpath(Path(source).resolve(), Path(options.out_dir).resolve())
    return {"size": options.size, "seq_len": options.seq_len, "capture": options.capture,
            "path_from_bundle": Path(relative).as_posix()}


def capture_model(source: str, size: str | None = None, seq_len: int | None = None,
                  method: str = "export") -> tuple[CapturedModel, TransformerGraph, ModelSummary]:
    """The phases before planning: load MODEL, capture its graph, recognise its blocks, summarise."""
    log.info("[1/6] loading %s", source)
    loaded = load_model(source, size, seq_len)
    log.info("[2/6] capturing the graph of %s", loaded)
    captured = capture(loaded, method)
    log.info("[3/6] recognising Transformer blocks")
    graph = recognise(captured)
    return captured, graph, summarise(graph, captured)


def write_plan_bundle(out_dir: str | Path, plan: Plan, summary: ModelSummary, graph: TransformerGraph,
                      captured: CapturedModel, source: str, cluster: Cluster | None = None,
                      wire_error: dict[str, float] | None = None, options: dict | None = None) -> Path:
    """The phases after planning: lower `plan`, render a module per rank, write the bundle (with
    `cluster`, so `galaxy-run --emulate` can rebuild the devices, the expected wire error, measured
    if not given, and the `model_options` MODEL was captured with, when given)."""
    if wire_error is None:
        wire_error = expected_wire_error(captured, graph, plan)
    log.info("[5/6] lowering and generating %d rank modules", plan.world_size)
    lowered = lower(graph, captured, plan, source)
    sources = {r.program.rank: render_rank(r.program) for r in lowered}
    log.info("[6/6] writing the bundle to %s", out_dir)
    document = PlanDocument(plan, summary, cluster, wire_error=wire_error).to_json() | {
        "input_names": list(graph.input_names), "output_names": list(graph.output_names), "source": source,
        "wire_dtype": plan.wire_dtype, **({"model_options": options} if options else {})}
    return write_bundle(out_dir, document, sources, {r.program.rank: r.weights for r in lowered},
                        captured.example_inputs, captured.reference_outputs)


def _plan(summary: ModelSummary, cluster: Cluster, options: CompileOptions) -> Plan:
    if options.plan:
        plan = Plan.load(options.plan)
    else:
        plan = make_plan(summary, cluster, objective=options.objective, solver=options.solver,
                         wire_dtype=options.wire)
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len,
                  summary.n_layers)
    return plan
