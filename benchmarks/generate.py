"""Text generation on the emulated edge cluster: Galaxy's prefill and decode plans against the
fastest device alone, an even tensor-parallel decode and a layer pipeline, side by side.

    python -m benchmarks.generate [--models llama:tiny,llama:small] [--clusters two-uneven,llama-3-uneven]
                                  [--bandwidths 100,500,1000] [--latencies 0.5,2,5]
                                  [--networks 100/0.5,1000/5] [--variants galaxy,fastest,even-tp,pipeline]
                                  [--prompt 256]
                                  [--new-tokens 16] [--repeat 3] [--out benchmarks/results/generate]

Variants (each a prefill plan and a decode layout, compiled for the cluster at that network):

    galaxy    what `galaxy-compile --max-len` makes: the ILP's prefill plan and the decode layout the
              planner predicts fastest (keep, single or pipeline: planner/decode.py), or a head split
              whose decode makes the whole request faster (planner/generation.py)
    ilp       the ILP's prefill plan and the decode layout predicted fastest after it, without
              the joint choice (not in the default list: to see what that choice changes)
    fastest   the fastest device that holds the model, alone, for both phases
    even-tp   the even hybrid split for the prefill; decode tensor-parallel over it (keep)
    pipeline  whole layers per device in proportion to speed, for both phases (Jupiter-style)

Clusters are clusters/NAME.toml; NAME:MIB gives each device MIB MiB, so that the model does not
fit on one device (the planner counts memory; the emulator does not enforce it). The devices'
rates are calibrated (benchmarks/calibrate.py): one core of this machine is measured at the
model's shapes (GEMM, SDPA, GEMV, dispatch) and each device gets that times its CPU share, what
the emulator gives it, and where the emulator must use CPU quotas (more devices than cores) the
planner's links get the 2 ms per message a quota costs (docs/EMULATION.md), as the cluster files
do; --no-calibrate plans with the files' nominal GFLOP/s and the grid's latency alone.

Models: `llama:tiny` is models/llama.py's tiny size; `llama:small` is a Llama-architecture
config of about 110 M parameters (GQA 12/4 heads, 12 layers, hidden 768, vocab 32000, random
weights), the largest whose whole grid runs in the time this machine has (the ~1B
`llama:base` compiles and runs too: give it in --models). Each run feeds a `--prompt`-token prompt
(the prefill length) and generates `--new-tokens` greedily; the emulator gives each device its CPU
share and each link its bandwidth (tc) and latency (runtime/linkdelay.py). TTFT and TBT are medians
over --repeat runs after a warm-up (TBT: each run's median gap between tokens, then the median);
every variant must give the same tokens (`same_tokens`). The fastest device alone uses no link, so
it is measured once per model and cluster and its row repeated for the other networks. Writes results.json, results.md and
results.png to --out.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.calibrate import calibrated, measure_host
from benchmarks.output import finish, parser, pyplot, save_figure, save_rows, start
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.pipeline import capture_for_generation, model_label, write_generation_bundle
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.decode import plan_generation
from galaxy.compiler.planner.generation import plan_for_generation
from galaxy.compiler.cost.latency import predict
from galaxy.compiler.ir.plan import Plan, StageSplit, validate_plan
from galaxy.compiler.ir.schedule import stage_schedule
from galaxy.runtime.splits import split_sizes
from galaxy.host.generate import generate_emulated
from galaxy.runtime.generate import GenerationRequest

log = logging.getLogger("benchmarks.generate")
REPO = Path(__file__).resolve().parents[1]
VARIANTS = ("galaxy", "fastest", "even-tp", "pipeline")
OPTIONAL_VARIANTS = ("ilp",)
QUOTA_STEP_MS = 2.0  # the emulator's effective per-message wait under CPU quotas (docs/EMULATION.md)
SMALL_LLAMA = {  # ~110 M parameters, Llama 3 architecture (GQA, RoPE, RMSNorm, gated MLP)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 768, "num_hidden_layers": 12,
    "num_attention_heads": 12, "num_key_value_heads": 4, "intermediate_size": 2048, "vocab_size": 32000,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False,
    "bos_token_id": 1, "eos_token_id": 2}


def model_source(spec: str, scratch: Path) -> tuple[str, str | None]:
    """(MODEL argument, size) of a --models entry."""
    kind, size = spec.split(":")
    if (kind, size) == ("llama", "small"):
        folder = scratch / "llama-small"
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text(json.dumps(SMALL_LLAMA))
        return str(folder / "config.json"), None
    return str(REPO / "models" / f"{kind}.py"), size


def cluster_of(spec: str) -> Cluster:
    """clusters/NAME.toml; NAME:MIB gives every device MIB MiB of memory (a model that does not fit on one)."""
    name, _, mib = spec.partition(":")
    cluster = load_cluster(REPO / "clusters" / f"{name}.toml")
    if mib:
        cluster = replace(cluster, name=spec, devices=tuple(replace(d, mem_bytes=int(float(mib) * 2**20))
                                                            for d in cluster.devices))
    return cluster


def networks(args) -> list[tuple[float, float]]:
    """(Mbit/s, latency ms) settings: --networks, else every --bandwidths x --latencies."""
    if args.networks:
        return [(float(b), float(x)) for b, x in (item.split("/") for item in args.networks.split(","))]
    return [(float(b), float(x)) for b in args.bandwidths.split(",") for x in args.latencies.split(",")]


def at_network(cluster: Cluster, mbit: float, latency_ms: float) -> Cluster:
    link = replace(cluster.default_link, bandwidth_bytes_per_s=mbit * 1e6 / 8, latency_s=latency_ms / 1e3)
    return replace(cluster, name=f"{cluster.name}@{mbit:g}Mbit/{latency_ms:g}ms", default_link=link,
                   link_overrides=())


def prefill_plan(variant: str, summary, cluster: Cluster, max_len: int):
    if variant in ("galaxy", "ilp"):
        return make_plan(summary, cluster, cache_tokens=max_len)
    if variant == "fastest":
        return make_plan(summary, cluster, solver="single", cache_tokens=max_len)
    if variant == "even-tp":
        return make_plan(summary, cluster, solver="even", cache_tokens=max_len)
    return layer_pipeline_plan(summary, cluster, max_len)


def layer_pipeline_plan(summary, cluster: Cluster, max_len: int) -> Plan:
    """Whole layers on every device (at least one each, the rest in proportion to GFLOP/s), one
    device per stage in the cluster's order: the pipeline baseline's prefill."""
    devices = cluster.devices[:summary.n_layers]
    extra = split_sizes(summary.n_layers - len(devices), [d.flops_per_s for d in devices])
    stages, first = [], 0
    for rank, more in enumerate(extra):
        end = first + 1 + more
        stages.append(StageSplit(
            ranks=(rank,), first_layer=first, end_layer=end, heads_per_rank=(summary.heads,),
            kv_heads_per_rank=(summary.kv_heads,), columns_per_rank=(summary.intermediate,),
            tokens_per_rank=(summary.seq_len,),
            schedule=stage_schedule(1, first=first == 0, last=end == summary.n_layers,
                                    parallel=summary.parallel_blocks)))
        first = end
    plan = Plan(model=summary.name, cluster=cluster.name, devices=tuple(d.name for d in devices),
                stages=tuple(stages), solver="layer-pipeline")
    validate_plan(plan, summary.heads, summary.kv_heads, summary.intermediate, summary.seq_len, summary.n_layers)
    latency, blocks = predict(plan, build_cost_table(summary, cluster, cache_tokens=max_len))
    return replace(plan, predicted_latency_s=latency, predicted_blocks=blocks)


DECODE = {"galaxy": None, "ilp": None, "fastest": None, "even-tp": "keep", "pipeline": "pipeline"}


def _structure(plan, generation) -> str:
    """What a bundle runs (the predictions aside): bundles with the same structure are the same."""
    return json.dumps([[s.to_json() if hasattr(s, "to_json") else repr(s) for s in plan.stages],
                       [repr(s) for s in generation.decode.stages], generation.layout], default=str)


def run_grid(args) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="galaxy-bench-generate-", dir=args.scratch) as scratch_dir:
        scratch = Path(scratch_dir)
        for spec in args.models.split(","):
            source, size = model_source(spec, scratch)
            prompt_len = args.prompt if spec != "llama:tiny" else min(args.prompt, 64)
            max_len = prompt_len + args.new_tokens
            started = time.monotonic()
            prefill, decode, lm = capture_for_generation(source, size, prompt_len)
            log.info("%s: captured in %.0f s", spec, time.monotonic() - started)
            prompt = tuple(torch.randint(3, lm.vocab_size, (prompt_len,),
                                         generator=torch.Generator().manual_seed(0)).tolist())
            request = GenerationRequest(prompt, args.new_tokens, stop_at_eos=False)
            host = measure_host(prefill[2]) if args.calibrate else None
            for cluster_name in args.clusters.split(","):
                base = cluster_of(cluster_name)
                quotas = len(base.devices) > (os.cpu_count() or 1)  # the emulator's CPU mode (host/emulate.py)
                if host is not None:
                    base = calibrated(base, host, "quota" if quotas else "weight")
                bundles: dict[str, Path] = {}
                alone: dict | None = None  # the fastest device alone sends nothing: measured once per cluster
                # Under CPU quotas (more devices than cores) a message that reaches a throttled device
                # waits for its next period: the cluster files charge that as 2 ms a step
                # (docs/EMULATION.md, "Effective per-step latency"); the emulated links do not get it.
                quota_ms = QUOTA_STEP_MS if args.calibrate and quotas else 0.0
                for mbit, latency_ms in networks(args):
                    emulated = at_network(base, mbit, latency_ms)
                    cluster = replace(at_network(base, mbit, latency_ms + quota_ms), name=emulated.name)
                    tokens_by_variant = {}
                    for variant in args.variants.split(","):
                        row = {"model": spec, "cluster": cluster_name, "devices": len(base.devices),
                               "gflops": [round(d.flops_per_s / 1e9, 1) for d in base.devices],
                               "mbit": mbit, "latency_ms": latency_ms, "variant": variant,
                               "prompt_tokens": prompt_len, "new_tokens": args.new_tokens}
                        try:
                            if variant == "fastest" and alone is not None:
                                row.update({**alone, "measured_at": "the first network (no link used)"})
                            else:
                                row.update(_one(variant, prefill, decode, lm, cluster, emulated, max_len, source,
                                                bundles, scratch, request, args))
                                row["planned_latency_ms"] = latency_ms + quota_ms
                                if variant == "fastest" and row["prefill_devices"] == 1 and \
                                        row["decode_layout"] == "keep":
                                    alone = {k: v for k, v in row.items() if k not in
                                             ("mbit", "latency_ms", "predicted_ttft_s", "predicted_tbt_s")}
                            tokens_by_variant[variant] = row.pop("tokens")
                        except Exception as exc:  # a row with its error; the grid goes on
                            log.exception("%s %s %s", spec, cluster.name, variant)
                            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                        rows.append(row)
                        save_rows(args.out, rows)
                    reference = tokens_by_variant.get("fastest") or next(iter(tokens_by_variant.values()), None)
                    for row in rows[-len(args.variants.split(",")):]:
                        if row["variant"] in tokens_by_variant:
                            row["same_tokens"] = tokens_by_variant[row["variant"]] == reference
                    log.info("%s on %s at %g Mbit/s, %g ms: %s", spec, cluster_name, mbit, latency_ms,
                             _progress(rows[-len(args.variants.split(",")):]))
                for path in bundles.values():
                    shutil.rmtree(path, ignore_errors=True)
    return rows


def _progress(rows: list[dict]) -> str:
    """One network point's medians, for the log while the grid runs."""
    return "; ".join(f"{r['variant']} failed" if "error" in r else
                     f"{r['variant']} TTFT {1e3 * r['ttft_s']:.1f} ms, TBT {1e3 * r['tbt_s']:.1f} ms" for r in rows)


def _one(variant, prefill, decode, lm, cluster, emulated, max_len, source, bundles, scratch, request, args) -> dict:
    """Plan `variant` for `cluster`, compile it (or reuse a bundle of the same plans), run it on the
    emulated devices of `emulated` (the same devices; links without the quota term)."""
    captured, graph, summary = prefill
    plan = prefill_plan(variant, summary, cluster, max_len)
    if variant == "galaxy":
        plan, generation = plan_for_generation(plan, summary, decode[2], cluster, max_len, lm)
    else:
        generation = plan_generation(plan, summary, decode[2], cluster, max_len, lm, DECODE[variant])
    key = _structure(plan, generation)
    if key not in bundles:
        out = scratch / f"bundle-{len(bundles)}"
        write_generation_bundle(out, plan, generation, prefill, decode, model_label(source), cluster, {})
        bundles[key] = out
    cluster_json = emulated.to_json()
    generated = generate_emulated(bundles[key], request, cluster=cluster_json, repeat=args.repeat, warmup=1,
                                  timeout_s=args.timeout)
    used = sorted({plan.devices[r] for s in generation.decode.stages for r in s.ranks})
    return {"prefill_solver": plan.solver, "prefill_devices": plan.world_size, "prefill_stages": len(plan.stages),
            "prefill_schedule": str(plan.stages[0].schedule), "decode_layout": generation.layout,
            "decode_devices": used, "decode_schedule": str(generation.decode.stages[0].schedule),
            "predicted_ttft_s": generation.predicted_ttft_s, "predicted_tbt_s": generation.predicted_tbt_s,
            "ttft_s": generated.ttft_s, "tbt_s": generated.tbt_s,
            "ttft_runs_s": [r["ttft_s"] for r in generated.runs],
            "tbt_runs_s": [statistics.median(r["tbt_s"]) for r in generated.runs if r["tbt_s"]],
            "decode_notes": list(generation.notes), "tokens": generated.new_token_ids}


# --- report ------------------------------------------------------------------------------------

def markdown(rows: list[dict], args) -> str:
    lines = ["# Generation on the emulated cluster", "",
             "Device rates: " + ("one core of this machine measured at the model's shapes, times each device's "
                                 "CPU share (GFLOP/s per device in results.json); with more devices than cores "
                                 f"(CPU quotas) the planner also charges {QUOTA_STEP_MS:g} ms a message"
                                 if args.calibrate else
                                 "the cluster files' nominal GFLOP/s (--no-calibrate)") + ".", "",
             f"Prompt {args.prompt} tokens (tiny: at most 64), {args.new_tokens} new tokens, greedy; medians of "
             f"{args.repeat} runs after one warm-up; TTFT = time to first token, TBT = median time between "
             "tokens, in ms. `x fastest` = the fastest device alone's time / Galaxy's (above 1: Galaxy is "
             "faster). Galaxy's plans are the planner's choice for that cluster and network: the prefill's "
             "solver (the ILP's, or a head split that makes the whole request faster), then the decode "
             "layout and its devices.", ""]
    variants = args.variants.split(",")
    for (model, cluster) in dict.fromkeys((r["model"], r["cluster"]) for r in rows):
        group = [r for r in rows if r["model"] == model and r["cluster"] == cluster]
        lines += [f"## {model} on {cluster} ({group[0]['devices']} devices)", ""]
        header = ["Mbit/s", "latency ms", *(f"TTFT {v}" for v in variants), "TTFT x fastest",
                  *(f"TBT {v}" for v in variants), "TBT x fastest", "Galaxy's plans", "same tokens"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for (mbit, latency) in dict.fromkeys((r["mbit"], r["latency_ms"]) for r in group):
            by = {r["variant"]: r for r in group if r["mbit"] == mbit and r["latency_ms"] == latency}

            def cell(v, key):
                r = by.get(v)
                if r is None or r.get(key) is None:
                    return "err" if r is not None and "error" in r else "-"
                return f"{1e3 * r[key]:.1f}"

            def ratio(key):
                g, f = by.get("galaxy", {}).get(key), by.get("fastest", {}).get(key)
                return f"{f / g:.2f}" if g and f else "-"
            galaxy = by.get("galaxy", {})
            choice = (f"{galaxy['prefill_solver']} prefill, {galaxy['decode_layout']} decode "
                      f"({'+'.join(galaxy['decode_devices'])})" if "decode_layout" in galaxy else "-")
            same = all(r["same_tokens"] for r in by.values() if "same_tokens" in r)
            lines.append("| " + " | ".join([f"{mbit:g}", f"{latency:g}", *(cell(v, "ttft_s") for v in variants),
                                            ratio("ttft_s"), *(cell(v, "tbt_s") for v in variants),
                                            ratio("tbt_s"), choice, "yes" if same else "NO"]) + " |")
        lines.append("")
    errors = [r for r in rows if "error" in r]
    if errors:
        lines += ["## Errors", ""] + [f"- {r['model']} {r['cluster']} {r['mbit']:g} Mbit/s {r['latency_ms']:g} ms "
                                      f"{r['variant']}: {r['error']}" for r in errors] + [""]
    return "\n".join(lines)


def plot(rows: list[dict], args, path: Path) -> None:
    plt = pyplot()

    groups = list(dict.fromkeys((r["model"], r["cluster"]) for r in rows))
    fig, axes = plt.subplots(len(groups), 2, figsize=(12, 3.6 * len(groups)), squeeze=False)
    for (model, cluster), (ax_ttft, ax_tbt) in zip(groups, axes):
        group = [r for r in rows if r["model"] == model and r["cluster"] == cluster and "ttft_s" in r]
        settings = list(dict.fromkeys((r["mbit"], r["latency_ms"]) for r in group))
        labels = [f"{m:g}M/{lat:g}ms" for m, lat in settings]
        width = 0.8 / max(1, len(args.variants.split(",")))
        for k, variant in enumerate(args.variants.split(",")):
            by = {(r["mbit"], r["latency_ms"]): r for r in group if r["variant"] == variant}
            xs = [i + k * width for i in range(len(settings))]
            for ax, key in ((ax_ttft, "ttft_s"), (ax_tbt, "tbt_s")):
                ax.bar(xs, [1e3 * by[s][key] if s in by and by[s].get(key) else 0 for s in settings], width,
                       label=variant)
        for ax, what in ((ax_ttft, "time to first token (ms)"), (ax_tbt, "time between tokens (ms)")):
            ax.set_xticks([i + 0.4 - width / 2 for i in range(len(settings))], labels, rotation=45, fontsize=7)
            ax.set_title(f"{model} on {cluster}: {what}", fontsize=9)
            ax.set_yscale("log")
            ax.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    cli = parser("benchmarks.generate", __doc__)
    cli.add_argument("--models", default="llama:tiny,llama:small")
    cli.add_argument("--clusters", default="two-uneven,llama-3-uneven",
                     help="clusters/NAME.toml, or NAME:MIB to give every device MIB MiB of memory")
    cli.add_argument("--bandwidths", default="100,500,1000", help="Mbit/s")
    cli.add_argument("--latencies", default="0.5,2,5", help="ms")
    cli.add_argument("--networks", help="Mbit/s/ms pairs instead of the full grid, e.g. 100/0.5,1000/5")
    cli.add_argument("--variants", default=",".join(VARIANTS))
    cli.add_argument("--prompt", type=int, default=256, help="prompt tokens (the prefill length)")
    cli.add_argument("--new-tokens", type=int, default=16)
    cli.add_argument("--repeat", type=int, default=3)
    cli.add_argument("--timeout", type=float, default=300.0, help="a rank gives up on a peer after S seconds")
    cli.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                     help="plan with the cluster files' rates as written (default: measure this machine's core "
                          "and give each device that times its CPU share)")
    cli.add_argument("--scratch", default=None, help="folder for the bundles (default: the system's temp)")
    cli.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "generate")
    args = cli.parse_args(argv)
    unknown = set(args.variants.split(",")) - set(VARIANTS) - set(OPTIONAL_VARIANTS)
    if unknown:
        cli.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS + OPTIONAL_VARIANTS)}")
    start(args.out)
    rows = run_grid(args)
    if any("ttft_s" in r for r in rows):
        plot(rows, args, args.out / "results.png")
    return finish(args.out, rows, markdown(rows, args))


if __name__ == "__main__":
    raise SystemExit(main())
