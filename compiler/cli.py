"""Command lines: galaxy-compile and galaxy-plan. Argument parsing and printing only."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from galaxy.compiler.errors import GalaxyError


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("torch", "transformers", "torch._dynamo", "torch.export"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def compile_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="galaxy-compile",
        description="Compile a Transformer into one executable module per edge device.")
    parser.add_argument("model", help="a model.py (build_model/example_inputs), an HF config.json, "
                                      "or a local HF checkpoint folder")
    parser.add_argument("--cluster", help="cluster TOML (default: the bundled clusters/home-3.toml)")
    parser.add_argument("-o", "--output", default="bundle", help="bundle directory (default: ./bundle)")
    parser.add_argument("--plan-only", action="store_true", help="plan and print, write no bundle")
    parser.add_argument("--plan", help="use this plan.json instead of planning")
    parser.add_argument("--save-plan", help="also write the plan to this JSON file")
    parser.add_argument("--objective", choices=["latency", "throughput"], default="latency")
    parser.add_argument("--solver", choices=["ilp", "even", "proportional", "single"], default="ilp",
                        help="ilp (default) or a baseline split")
    parser.add_argument("--size", help="size knob passed to model.py (e.g. tiny, base, large)")
    parser.add_argument("--seq-len", type=int, help="sequence length of the example inputs")
    parser.add_argument("--capture", choices=["export", "symbolic"], default="export",
                        help="torch.export (default) or torch.fx.symbolic_trace then export")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)

    from galaxy.compiler.pipeline import CompileOptions, compile_model
    options = CompileOptions(cluster=args.cluster, out_dir=None if args.plan_only else args.output,
                             plan_only=args.plan_only, plan=args.plan, objective=args.objective,
                             solver=args.solver, size=args.size, seq_len=args.seq_len, capture=args.capture)
    try:
        result = compile_model(args.model, options)
    except GalaxyError as exc:
        print(f"galaxy-compile: error: {exc}", file=sys.stderr)
        return 2
    print(result.plan)
    if args.save_plan:
        result.plan.save(args.save_plan)
        print(f"plan written to {args.save_plan}")
    if result.bundle_dir:
        print(f"bundle written to {result.bundle_dir}: run it with  galaxy-run {result.bundle_dir} --local")
    return 0


def plan_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="galaxy-plan", description="Inspect plans.")
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("show", help="print a plan (plan.json or a bundle's plan.json)")
    show.add_argument("plan")
    args = parser.parse_args(argv)
    _setup_logging(False)
    from galaxy.compiler.ir.plan import Plan
    path = Path(args.plan)
    try:
        plan = _read_plan(path)
    except GalaxyError as exc:
        print(f"galaxy-plan: error: {exc}", file=sys.stderr)
        return 2
    print(plan)
    return 0


def _read_plan(path: Path):
    import json

    from galaxy.compiler.errors import PlanFileError
    from galaxy.compiler.ir.plan import Plan
    if path.is_dir():
        path = path / "plan.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanFileError(f"cannot read {path}: {exc}") from exc
    return Plan.from_json(data["plan"] if "plan" in data and "stages" not in data else data)
