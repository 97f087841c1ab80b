"""galaxy-generate: generate tokens with a generation bundle (galaxy-compile MODEL --max-len N).

    galaxy-generate BUNDLE (--local | --emulate) (--prompt-ids 1,2,3 | --prompt TEXT --tokenizer DIR)
                    --max-new-tokens N [--temperature T] [--top-k K] [--seed S] [--ignore-eos]
                    [--repeat N] [--warmup N] [--json] [--timeout S] [--threads N] [--cluster-json C.json]

Every rank starts as in galaxy-run (host/launcher.py), with `--generate`: rank 0 reads the request
and writes the result (runtime/generate.py). Prints the new token ids (and their text when a
tokenizer is given), the time to first token and the time between tokens, beside the plan's
predictions; `--json` prints one JSON object instead:

    {"new_token_ids": [...], "ttft_s": ..., "tbt_s": ..., "tbt_per_token_s": [...], "text": ...,
     "predicted_ttft_s": ..., "predicted_tbt_s": ..., "runs": N}

ttft_s and tbt_s are medians over the --repeat runs (tbt_s: the median time between tokens of
each run, then the median over runs). Python: `generate_local(bundle, request)` and
`generate_emulated(bundle, request)` return a `Generated`.

Exit codes: 0 ok; 2 bad input or a rank failed (one line names it); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from galaxy.host.launcher import _log_line, supervise, with_token
from galaxy.host.placement import Placement, loopback_threads, on_emulated_devices, on_loopback
from galaxy.host.processes import OnLine, child_env, cli_exit_code
from galaxy.host.tokenizer import Tokenizer
from galaxy.runtime import bundle
from galaxy.runtime.errors import UsageError
from galaxy.runtime.generate import GenerationRequest, check_request

log = logging.getLogger(__name__)


@dataclass
class Generated:
    """What a generation run measured: every timed run's result (runtime/generate.py)."""

    runs: list[dict]  # {"new_token_ids", "ttft_s", "tbt_s": [...], "prompt_tokens", "stopped_at_eos"}
    predicted_ttft_s: float
    predicted_tbt_s: float

    @property
    def new_token_ids(self) -> list[int]:
        return self.runs[-1]["new_token_ids"]

    @property
    def ttft_s(self) -> float:
        return statistics.median(run["ttft_s"] for run in self.runs)

    @property
    def tbt_s(self) -> float | None:
        """The median over runs of each run's median time between tokens (None: one new token)."""
        per_run = [statistics.median(run["tbt_s"]) for run in self.runs if run["tbt_s"]]
        return statistics.median(per_run) if per_run else None

    def to_json(self, text: str | None = None) -> dict:
        return {"new_token_ids": self.new_token_ids, "ttft_s": self.ttft_s, "tbt_s": self.tbt_s,
                "tbt_per_token_s": self.runs[-1]["tbt_s"], **({"text": text} if text is not None else {}),
                "predicted_ttft_s": self.predicted_ttft_s, "predicted_tbt_s": self.predicted_tbt_s,
                "runs": len(self.runs)}


def generate_local(bundle_dir: str | Path, request: GenerationRequest, *, repeat: int = 1, warmup: int = 0,
                   timeout_s: float = 120.0, threads: int | None = None, env: Mapping[str, str] | None = None,
                   overall_timeout_s: float | None = None, on_line: OnLine | None = None) -> Generated:
    """Every rank on this machine over loopback (threads: the cores shared among the ranks)."""
    plan = _generation_plan(bundle_dir, request)
    if threads is None:
        threads = loopback_threads(len(plan["plan"]["devices"]))
    with on_loopback() as placement:
        return _generate(bundle_dir, request, placement, repeat, warmup, timeout_s, threads, env,
                         overall_timeout_s, on_line)


def generate_emulated(bundle_dir: str | Path, request: GenerationRequest, *, cluster: Mapping | None = None,
                      repeat: int = 1, warmup: int = 0, timeout_s: float = 120.0, threads: int | None = None,
                      env: Mapping[str, str] | None = None, overall_timeout_s: float | None = None,
                      on_line: OnLine | None = None) -> Generated:
    """Every rank in an emulated device (host/emulate.py: namespaces, shaped links, link latency in the
    transport, CPU shares); `cluster` as in launcher.run_emulated. Needs root."""
    _generation_plan(bundle_dir, request)
    with on_emulated_devices(bundle_dir, cluster, threads=threads) as placement:
        return _generate(bundle_dir, request, placement, repeat, warmup, timeout_s, threads, env,
                         overall_timeout_s, on_line)


def _generation_plan(bundle_dir: str | Path, request: GenerationRequest) -> dict:
    plan = bundle.load_plan(bundle_dir)
    if "generation" not in plan:
        raise UsageError(f"{bundle_dir} is not a generation bundle; compile it with galaxy-compile MODEL --max-len N")
    check_request(request, plan["generation"])  # before starting anything
    return plan


def _generate(bundle_dir, request: GenerationRequest, placement: Placement, repeat: int, warmup: int,
              timeout_s: float, threads: int | None, env, overall_timeout_s, on_line) -> Generated:
    bundle_dir = Path(bundle_dir).resolve()
    plan = bundle.load_plan(bundle_dir)
    devices = list(plan["plan"]["devices"])
    steps = (warmup + repeat) * (len(request.prompt_ids) + request.max_new_tokens)
    overall = overall_timeout_s or timeout_s * (2 + warmup + repeat) + 0.1 * steps
    with tempfile.TemporaryDirectory(prefix="galaxy-generate-") as scratch:
        request_file, result_file = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_file.write_text(json.dumps(request.__dict__ | {"prompt_ids": list(request.prompt_ids)}))
        common = ["--timeout", f"{timeout_s:g}", "--repeat", str(repeat), "--warmup", str(warmup),
                  *(["--threads", str(threads)] if threads else [])]
        commands = []
        for rank in range(len(devices)):
            argv = [sys.executable, "-u", str(bundle_dir / bundle.rank_module(rank)), *placement.master_args(rank),
                    *common, "--generate"]
            if rank == 0:
                argv += [str(request_file), "--output", str(result_file)]
            commands.append(placement.command(rank, argv))
        env = with_token(env)
        envs = [child_env(env, placement.env(rank)) for rank in range(len(devices))]
        fds = [placement.inherited_fds(rank) for rank in range(len(devices))]
        supervise(commands, envs, fds, devices, overall, on_line or _log_line(devices))
        runs = json.loads(result_file.read_text())["runs"]
    generation = plan["generation"]
    return Generated(runs, generation["predicted_ttft_s"], generation["predicted_tbt_s"])


# --- command line --------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet or args.json else logging.INFO, stream=sys.stderr,
                        format="%(message)s")

    def run() -> int:
        tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
        prompt = _prompt_ids(args, tokenizer)
        request = GenerationRequest(tuple(prompt), args.max_new_tokens, args.temperature, args.top_k, args.seed,
                                    not args.ignore_eos)
        options = dict(repeat=args.repeat, warmup=args.warmup, timeout_s=args.timeout, threads=args.threads)
        if args.emulate:
            cluster = _cluster_json(args.cluster_json) if args.cluster_json else None
            generated = generate_emulated(args.bundle, request, cluster=cluster, **options)
        else:
            generated = generate_local(args.bundle, request, **options)
        text = tokenizer.decode(generated.new_token_ids) if tokenizer else None
        print(json.dumps(generated.to_json(text)) if args.json else describe(generated, text))
        return 0
    return cli_exit_code("galaxy-generate", run)


def describe(generated: Generated, text: str | None = None) -> str:
    ids = generated.new_token_ids
    rows = [f"new tokens ({len(ids)}): {' '.join(map(str, ids))}"]
    if text is not None:
        rows.append(f"text: {text!r}")
    rows.append(f"time to first token: {1e3 * generated.ttft_s:.2f} ms (predicted {1e3 * generated.predicted_ttft_s:.2f}"
                f" ms){_over(generated)}")
    if generated.tbt_s is not None:
        gaps = generated.runs[-1]["tbt_s"]
        rows.append(f"time between tokens: median {1e3 * generated.tbt_s:.2f} ms (predicted "
                    f"{1e3 * generated.predicted_tbt_s:.2f} ms; last run min {1e3 * min(gaps):.2f}, "
                    f"max {1e3 * max(gaps):.2f} ms){_over(generated)}")
    if generated.runs[-1].get("stopped_at_eos"):
        rows.append("stopped at the end-of-sequence token")
    return "\n".join(rows)


def _over(generated: Generated) -> str:
    return f", median of {len(generated.runs)} runs" if len(generated.runs) > 1 else ""


def _prompt_ids(args: argparse.Namespace, tokenizer) -> list[int]:
    if args.prompt_ids is not None:
        try:
            return [int(t) for t in args.prompt_ids.split(",") if t.strip()]
        except ValueError as exc:
            raise UsageError(f"--prompt-ids {args.prompt_ids!r}: give comma-separated token ids, e.g. 1,2,3") from exc
    return tokenizer.encode(args.prompt)


def _cluster_json(path: str) -> dict:
    from galaxy.host.launcher import _read_cluster_json
    return _read_cluster_json(Path(path))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="galaxy-generate", description="Generate tokens with a generation bundle.")
    parser.add_argument("bundle", help="bundle folder made by galaxy-compile MODEL --max-len N")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--local", action="store_true", help="every rank on this machine (loopback)")
    mode.add_argument("--emulate", action="store_true", help="every rank in its own emulated device (root)")
    prompt = parser.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt-ids", metavar="IDS", help="the prompt as comma-separated token ids")
    prompt.add_argument("--prompt", metavar="TEXT", help="the prompt as text (needs --tokenizer)")
    parser.add_argument("--tokenizer", metavar="DIR", help="a local checkpoint folder whose tokenizer encodes "
                                                           "--prompt and decodes the new tokens")
    parser.add_argument("--max-new-tokens", type=int, required=True, metavar="N")
    parser.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 (default): greedy")
    parser.add_argument("--top-k", type=int, default=0, metavar="K", help="sample among the K likeliest (0: all)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="sampling seed (default 0)")
    parser.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-sequence token")
    parser.add_argument("--repeat", type=int, default=1, metavar="N", help="timed generations (medians reported)")
    parser.add_argument("--warmup", type=int, default=0, metavar="N", help="untimed generations first")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="a rank gives up on a peer after S seconds (default 120)")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads per rank")
    parser.add_argument("--cluster-json", metavar="CLUSTER.json", help="with --emulate: the cluster to emulate")
    parser.add_argument("--quiet", action="store_true", help="do not stream the ranks' logs")
    args = parser.parse_args(argv)
    if args.prompt is not None and not args.tokenizer:
        parser.error("--prompt needs --tokenizer DIR (a local checkpoint folder); or give --prompt-ids")
    if args.max_new_tokens < 1 or args.repeat < 1 or args.warmup < 0 or args.temperature < 0 or args.top_k < 0:
        parser.error("--max-new-tokens and --repeat must be >= 1; --warmup, --temperature and --top-k >= 0")
    if args.cluster_json and not args.emulate:
        parser.error("--cluster-json only applies with --emulate")
    return args


if __name__ == "__main__":
    sys.exit(main())
