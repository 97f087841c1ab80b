"""The compiler, one line per phase: MODEL + cluster -> plan -> bundle of per-device modules."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from galaxy.compiler.capture.decode import LanguageModel, decode_step_inputs, language_model
from galaxy.compiler.capture.load import load_model
from galaxy.compiler.capture.trace import CapturedModel, capture
from galaxy.compiler.codegen.bundle import check_output_dir, write_bundle
from galaxy.compiler.codegen.render import render_rank
from galaxy.compiler.cost.memory import cache_bytes_per_group
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.cluster_file import default_cluster_path, load_cluster
from galaxy.compiler.ir.generation import Generation
from galaxy.compiler.ir.graph import TransformerGraph
from galaxy.compiler.ir.plan import Plan, validate_plan
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.lower.shard import lower
from galaxy.compiler.lower.weights import with_decode_weights
from galaxy.compiler.passes.recognise import recognise
from galaxy.compiler.passes.summarise import summarise
from galaxy.compiler.passes.wire_error import expected_wire_error
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.choose import MIN_GAIN
from galaxy.compiler.planner.decode import plan_generation
from galaxy.compiler.planner.generation import plan_for_generation
from galaxy.compiler.planner.explain import fmt_bytes
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
    max_len: int | None = None  # generation: the tokens a sequence may reach (prompt + new tokens)
    decode: str | None = None  # generation: force the decode layout (keep | single | pipeline)
    min_gain: float = MIN_GAIN  # a multi-device plan must be predicted this much faster than one device
    # (and, generating, a head split than the ILP's plan over a full request)


@dataclass(frozen=True)
class CompileResult:
    plan: Plan
    summary: ModelSummary
    cluster: Cluster
    graph: TransformerGraph
    bundle_dir: Path | None
    wire_error: dict[str, float]  # expected max abs error of each output ({} for a float32 wire)
    generation: Generation | None = None  # a generation bundle's decode plan and predictions
    decode_summary: ModelSummary | None = None  # the one-token capture the decode plan was priced on


def compile_model(source: str, options: CompileOptions = CompileOptions()) -> CompileResult:
    cluster = load_cluster(options.cluster or default_cluster_path())
    if not options.plan_only and options.out_dir is not None:
        check_output_dir(options.out_dir)  # before minutes of work, not after
    if options.max_len is not None:
        return compile_for_generation(source, options, cluster)
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


def compile_for_generation(source: str, options: CompileOptions, cluster: Cluster) -> CompileResult:
    """A causal LM for text generation: the prefill plan (the prompt, right-padded to the compiled
    sequence length) and a decode plan (one token per step, against a key/value cache of
    `options.max_len` tokens), both in one bundle (docs/GENERATION.md)."""
    prefill, decode, model = capture_for_generation(source, options.size, options.seq_len, options.capture)
    captured, graph, summary = prefill
    log.info("[4/6] planning the prefill and the decode steps for %s", cluster.name)
    try:
        plan = _plan(summary, cluster, options)
    except InfeasiblePlanError as exc:
        cache = summary.n_layers * summary.kv_heads * cache_bytes_per_group(summary, options.max_len)
        raise InfeasiblePlanError(f"{exc}; that counts a key/value cache of {options.max_len} tokens "
                                  f"({fmt_bytes(cache)} in all, --max-len): compile with a smaller --max-len, "
                                  "or for a cluster with more memory", exc.shortfall_bytes_by_device) from exc
    if options.plan or options.solver != "ilp" or options.objective != "latency":  # the plan asked for
        generation = plan_generation(plan, summary, decode[2], cluster, options.max_len, model, options.decode)
    else:
        plan, generation = plan_for_generation(plan, summary, decode[2], cluster, options.max_len, model,
                                               options.decode, options.min_gain)
    wire_error = expected_wire_error(captured, graph, plan)
    if options.plan_only or options.out_dir is None:
        return CompileResult(plan, summary, cluster, graph, None, wire_error, generation, decode[2])
    bundle = write_generation_bundle(options.out_dir, plan, generation, prefill, decode, model_label(source),
                                     cluster, wire_error)
    return CompileResult(plan, summary, cluster, graph, bundle, wire_error, generation, decode[2])


Captured = tuple[CapturedModel, TransformerGraph, ModelSummary]


def capture_for_generation(source: str, size: str | None = None, seq_len: int | None = None,
                           method: str = "export") -> tuple[Captured, Captured, LanguageModel]:
    """The model loaded once and captured twice: over the prefill length, and for one decode step
    (one token at an explicit position: capture/decode.py)."""
    log.info("[1/6] loading %s", source)
    loaded = load_model(source, size, seq_len)
    model = language_model(loaded)
    captured = []
    for what, inputs in (("prefill", loaded), ("decode step", decode_step_inputs(loaded))):
        log.info("[2/6] capturing the %s graph of %s", what, inputs)
        graph_module = capture(inputs, method)
        log.info("[3/6] recognising Transformer blocks of the %s", what)
        graph = recognise(graph_module)
        captured.append((graph_module, graph, summarise(graph, graph_module)))
    return captured[0], captured[1], model


def write_generation_bundle(out_dir: str | Path, plan: Plan, generation: Generation, prefill: Captured,
                            decode: Captured, source: str, cluster: Cluster,
                            wire_error: dict[str, float]) -> Path:
    """A generation bundle: rank_<k>.py runs the prefill (keeping keys and values in the cache),
    decode_<k>.py the decode step of each rank that decodes; one weight file per rank holds both."""
    captured, graph, summary = prefill
    log.info("[5/6] lowering and generating the prefill and decode modules of %d ranks", plan.world_size)
    prefill_ranks = lower(graph, captured, plan, source, phase="prefill", max_len=generation.max_len)
    decode_ranks = lower(decode[1], decode[0], generation.decode, source, phase="decode", max_len=generation.max_len)
    weights = {r.program.rank: r.weights for r in prefill_ranks}
    for lowered in decode_ranks:
        weights[lowered.program.rank] = with_decode_weights(weights[lowered.program.rank], lowered.weights)
    log.info("[6/6] writing the bundle to %s", out_dir)
    document = PlanDocument(plan, summary, cluster, wire_error=wire_error, generation=generation,
                            decode_summary=decode[2]).to_json() | {
        "input_names": list(graph.input_names), "output_names": list(graph.output_names), "source": source,
        "wire_dtype": plan.wire_dtype}
    return write_bundle(out_dir, document, {r.program.rank: render_rank(r.program) for r in prefill_ranks},
                        weights, captured.example_inputs, captured.reference_outputs,
                        decode_sources={r.program.rank: render_rank(r.program) for r in decode_ranks})


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
                         wire_dtype=options.wire, cache_tokens=options.max_len or 0, min_gain=options.min_gain)
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len,
                  summary.n_layers)
    return plan
