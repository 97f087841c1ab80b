"""Command lines: galaxy-compile and galaxy-plan. Argument parsing and printing only.

Exit codes: 0 success; 2 bad input (a GalaxyError, one line on stderr); galaxy-compile
--check-against: 3 the plan is predicted slower than the reference by more than
--max-regression percent, 4 the reference was made for another model summary or cluster.
`galaxy-plan diff` exits 0 whatever the differences (it is informational).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from galaxy.compiler.errors import GalaxyError
from galaxy.compiler.planner import OBJECTIVES, SOLVERS


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("torch", "transformers", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def compile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galaxy-compile",
        description="Compile a Transformer into one executable module per edge device.",
        epilog="exit codes: 0 ok, 2 bad input, 3 regression (--check-against), 4 reference not comparable")
    parser.add_argument("model", help="a model.py (build_model/example_inputs), an HF config.json, "
                                      "or a local HF checkpoint folder")
    parser.add_argument("--cluster", help="cluster TOML (default: the bundled clusters/home-3.toml)")
    parser.add_argument("-o", "--output", default="bundle", help="bundle directory (default: ./bundle)")
    parser.add_argument("--plan-only", action="store_true", help="plan and print, write no bundle")
    parser.add_argument("--plan", help="use this plan instead of planning (a plan JSON, a --save-plan "
                                       "file or a bundle directory)")
    parser.add_argument("--save-plan", help="also write the plan, with the model summary and cluster it was "
                                            "made for, to this JSON file (what galaxy-plan reads)")
    parser.add_argument("--objective", choices=OBJECTIVES, default="latency")
    parser.add_argument("--solver", choices=SOLVERS, default="ilp",
                        help="ilp (default), a baseline split (sequence: sequence parallelism only; megatron: "
                             "Megatron-style tensor parallelism with all-reduces), "
                             "pipeline-dp (layer ranges on devices or device groups) or brute-force (tiny models only)")
    parser.add_argument("--wire", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="dtype of activations on the wire (default float32, exact): bfloat16 and float16 "
                             "halve the bytes; the planner prices them and galaxy-plan show states the error "
                             "this costs, measured at compile time")
    parser.add_argument("--min-gain", type=float, default=None, metavar="PCT",
                        help="use several devices only when predicted at least PCT percent faster than the "
                             "fastest device alone, and (--max-len) another prefill split than the ILP's only when "
                             "a request is predicted that much faster (default 5: the cost model's error on most "
                             "benchmark rows)")
    parser.add_argument("--size", help="size knob passed to model.py (e.g. tiny, base, large)")
    parser.add_argument("--seq-len", type=int, help="sequence length of the example inputs")
    parser.add_argument("--max-len", type=int, metavar="N",
                        help="compile a causal language model for text generation (galaxy-generate): the "
                             "prompt (up to --seq-len tokens) and the new tokens may reach N tokens; the bundle "
                             "holds the prefill plan, a decode plan and a key/value cache of N tokens")
    parser.add_argument("--decode", choices=["keep", "single", "pipeline"],
                        help="with --max-len: force the decode layout (default: the planner's choice; keep is "
                             "tensor parallelism over the prefill's head split, single the first device alone, "
                             "pipeline whole layers per device)")
    parser.add_argument("--capture", choices=["export", "symbolic"], default="export",
                        help="torch.export (default) or torch.fx.symbolic_trace then export")
    parser.add_argument("--check-against", metavar="PLAN",
                        help="reference plan (a --save-plan file or a bundle): fail (exit 3) if this plan "
                             "is predicted slower than it by more than --max-regression percent")
    parser.add_argument("--max-regression", type=float, default=0.0, metavar="PCT",
                        help="allowed predicted slow-down against --check-against, in percent (default 0)")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def compile_main(argv: list[str] | None = None) -> int:
    parser = compile_parser()
    args = parser.parse_args(argv)
    if args.max_regression != 0.0 and not args.check_against:
        parser.error("--max-regression needs --check-against")
    if args.min_gain is not None and not 0 <= args.min_gain < 100:
        parser.error(f"--min-gain must be a percentage in [0, 100), not {args.min_gain:g}")
    if args.plan and args.min_gain is not None:
        parser.error("--min-gain applies when planning; a --plan file is already planned")
    if args.plan and args.wire != "float32":
        parser.error("--wire applies when planning; a --plan file already fixes each action's wire dtype")
    if args.decode and args.max_len is None:
        parser.error("--decode applies to generation bundles: give --max-len N too")
    if args.max_len is not None and args.max_len < 2:
        parser.error("--max-len must be at least 2 (the prompt and one new token)")
    _setup_logging(args.verbose)

    from galaxy.compiler.pipeline import CompileOptions, compile_model
    from galaxy.compiler.report import PlanDocument, check_regression, read_plan_document
    try:
        reference = read_plan_document(args.check_against) if args.check_against else None
        with _bare_plan(args.plan) as plan_path:
            options = CompileOptions(cluster=args.cluster, out_dir=None if args.plan_only else args.output,
                                     plan_only=args.plan_only, plan=plan_path, objective=args.objective,
                                     solver=args.solver, wire=args.wire, size=args.size, seq_len=args.seq_len,
                                     capture=args.capture, max_len=args.max_len, decode=args.decode,
                                     min_gain=CompileOptions.min_gain if args.min_gain is None else args.min_gain / 100)
            result = compile_model(args.model, options)
    except GalaxyError as exc:
        print(f"galaxy-compile: error: {exc}", file=sys.stderr)
        return 2
    print(result.plan)
    if result.wire_error:
        errors = ", ".join(f"{name} {error:.2g}" for name, error in sorted(result.wire_error.items()))
        print(f"wire {result.plan.wire_dtype}: expected max abs error {errors} (measured at compile time)")
    if result.generation is not None:
        from galaxy.compiler.report.show import generation_summary_lines
        print("\n".join(generation_summary_lines(result.generation)))
    document = PlanDocument(result.plan, result.summary, result.cluster, wire_error=result.wire_error,
                            generation=result.generation, decode_summary=result.decode_summary)
    if args.save_plan:
        document.save(args.save_plan)
        print(f"plan written to {args.save_plan}")
    if result.bundle_dir and result.generation is not None:
        print(f"bundle written to {result.bundle_dir}: generate with  galaxy-generate {result.bundle_dir} --local "
              f"--prompt-ids 1,2,3 --max-new-tokens 8")
    elif result.bundle_dir:
        print(f"bundle written to {result.bundle_dir}: run it with  galaxy-run {result.bundle_dir} --local")
    if reference is not None:
        verdict = check_regression(reference, document, args.max_regression)
        if not verdict.ok:
            print(f"galaxy-compile: regression check failed: {verdict.message}", file=sys.stderr)
            return verdict.exit_code
        print(f"regression check passed: {verdict.message}")
    return 0


@contextlib.contextmanager
def _bare_plan(path: str | None) -> Iterator[str | None]:
    """--plan as a bare plan file: the pipeline reads plans with Plan.load, which does not know
    plan documents (--save-plan files) or bundles, so those are unwrapped into a temporary file."""
    if path is None:
        yield None
        return
    from galaxy.compiler.report import read_plan_document
    document = read_plan_document(path)
    with tempfile.TemporaryDirectory(prefix="galaxy-plan-") as tmp:
        bare = Path(tmp) / "plan.json"
        document.plan.save(bare)
        yield str(bare)


def plan_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="galaxy-plan", description="Inspect and compare plans.",
                                     epilog="PLAN is a --save-plan file, a bundle directory or a bare plan JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="shares, memory, predicted time per block and the planner's notes")
    show.add_argument("plan", metavar="PLAN")
    show.add_argument("--png", metavar="FILE", help="also draw a per-rank timeline of one layer, the prologue "
                                                    "and the epilogue (needs matplotlib: galaxy-edge[bench])")
    diff = sub.add_parser("diff", help="what changed from OLD to NEW (always exits 0)")
    diff.add_argument("old", metavar="OLD")
    diff.add_argument("new", metavar="NEW")
    return parser


def plan_main(argv: list[str] | None = None) -> int:
    args = plan_parser().parse_args(argv)
    _setup_logging(False)
    from galaxy.compiler.report import diff_plans, read_plan_document, show_plan
    try:
        if args.command == "diff":
            print(diff_plans(read_plan_document(args.old), read_plan_document(args.new)))
            return 0
        document = read_plan_document(args.plan)
        print(show_plan(document))
        if args.png:
            return _write_png(document.plan, args.png)
    except GalaxyError as exc:
        print(f"galaxy-plan: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _write_png(plan, path: str) -> int:
    try:
        from galaxy.compiler.report.timeline import write_timeline_png
        write_timeline_png(plan, path)
    except ImportError as exc:
        print(f"galaxy-plan: error: --png needs matplotlib ({exc}); pip install 'galaxy-edge[bench]'",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"galaxy-plan: error: cannot write {path}: {exc}", file=sys.stderr)
        return 2
    print(f"timeline written to {path}")
    return 0
