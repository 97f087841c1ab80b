"""What a generated rank module runs: `sys.exit(run_rank(RANK, forward))`.

    python rank_<k>.py --master HOST:PORT [--input IN [IN ...]] [--output OUT] [--timeout S]
                       [--requests M] [--repeat N] [--warmup N] [--timings-json PATH] [--threads N]
                       [--token-file PATH]
    python rank_<k>.py --serve HOST:PORT [--token-file PATH|-] [--timeout S] [--threads N]

(or torchrun's RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT instead of --master).
Every rank needs the cluster token (GALAXY_CLUSTER_TOKEN, or --token-file; runtime/auth.py).
Steps: verify this rank's files against manifest.json, load plan and weights, join the
gloo group (proving the token), broadcast rank 0's inputs, then run `forward(inputs, weights,
ctx)` under torch.inference_mode() (warmup + repeat times, a barrier before each). Rank 0
writes the outputs and reports latencies. Runtime errors end the process with one line on
stderr. A final barrier that fails once the work is done is a warning, not a failure: rank 0
has already written complete outputs.

With --serve the rank stays up and answers requests from the coordinator of galaxy-serve at
HOST:PORT (runtime/serving.py) until it is told to stop or loses the coordinator.

With --requests M > 1 the M requests (the input files in turn) stream through the stages
(runtime/stream.py): one barrier, then every rank runs its stream; rank 0 reports requests/s
and each request's latency, and writes request i's output `name` as `i/name`. --repeat N
streams N times.

Exit codes: 0 success; 2 this rank's own problem (bundle, command line, rendezvous); 4 a
peer failed or timed out (the message names it: look there first); 1 a bug (traceback).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

import torch

from . import auth, bundle, generate, rendezvous, serving, timing
from .collectives import broadcast_tensors
from .context import RankContext, make_context
from .errors import CollectiveError, GalaxyRuntimeError, UsageError
from .memory import retain_freed_memory
from .p2p import barrier
from .stream import Stream, StreamRun, pack_requests, sequential, timed_stream, unpack_requests

log = logging.getLogger(__name__)

Forward = Callable[[dict, dict, "RankContext"], "Mapping[str, torch.Tensor] | None"]

EXIT_RUNTIME_ERROR = 2  # this rank's own problem: bundle, command line, rendezvous
EXIT_PEER_FAILED = 4  # a transfer with a peer failed or timed out: look at that peer first
EXIT_INTERRUPTED = 130


def run_rank(rank: int, forward: Forward, argv: list[str] | None = None, stream: Stream | None = None) -> int:
    """Run this rank of the bundle that holds `forward`'s module; returns the exit code.

    `stream(requests, weights, ctx)` yields the outputs of many requests; default: `forward`
    once per request (rank 0 of a pipeline passes its own, overlapping the stages).
    """
    args = _parse_args(rank, argv)
    _setup_logging(rank, args.log_level)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        # Before the weights load: each forward's activations then come back from the heap
        # instead of fresh pages (memory.py: ~5% of a BERT-base forward went to page faults).
        retain_freed_memory()
        if args.serve:
            return serving.serve(rank, sys.modules[forward.__module__], args.serve, args.token_file,
                                 args.timeout, args.connect_timeout or args.timeout)
        return _run(rank, forward, stream or sequential(forward), args)
    except GalaxyRuntimeError as exc:
        message = " ".join(str(exc).split())
        sys.stderr.write(f"galaxy rank {rank}: error: {message}\n")
        return EXIT_PEER_FAILED if isinstance(exc, CollectiveError) else EXIT_RUNTIME_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"galaxy rank {rank}: interrupted\n")
        return EXIT_INTERRUPTED
    finally:
        rendezvous.close()


def _run(rank: int, forward: Forward, stream: Stream, args: argparse.Namespace) -> int:
    bundle_dir = find_bundle_dir(forward)
    bundle.verify_manifest(bundle_dir, bundle.rank_files(bundle_dir, rank))
    plan = bundle.load_plan(bundle_dir)
    devices = tuple(plan["plan"]["devices"])
    world_size = len(devices)
    host, port = _master(rank, world_size, args)
    token = auth.load_token(args.token_file)
    weights = bundle.load_tensors(bundle_dir / bundle.rank_weights(rank))
    log.info("rank %d (%s): %d weight tensors from %s", rank, devices[rank], len(weights), bundle_dir)
    ctx = make_context(rank, plan, bundle_dir, args.timeout)
    if args.generate is not None:
        return _run_generation(rank, forward, args, (bundle_dir, plan, host, port, token), weights, ctx)
    if generate.is_generation_bundle(plan):  # a plain forward of the prefill still writes its cache
        weights = generate.install_prefill_caches(rank, plan, weights)
    packed = None
    if rank == 0:  # before joining, so a wrong input fails fast and alone
        example = bundle.load_tensors(bundle_dir / bundle.EXAMPLE_INPUTS)
        files = [bundle.load_tensors(path) for path in args.input] if args.input else [example]
        for inputs in files:
            check_inputs(inputs, example)
        packed = pack_requests(files, args.requests or len(files))
    listener = socket.socket(fileno=args.master_fd) if args.master_fd is not None and rank == 0 else None
    rendezvous.connect(rank, world_size, host, port, args.connect_timeout or args.timeout, devices,
                       token=token, plan_sha=auth.plan_digest(bundle_dir), listen_socket=listener)
    files, requests = unpack_requests(broadcast_tensors(packed, ctx.world()))  # rank 0's count rules
    if requests > 1:
        runs = _streamed_runs(forward, stream, [files[i % len(files)] for i in range(requests)], weights, ctx, args)
        if rank == 0:
            _report_stream(runs, args)
    else:
        latencies, outputs = _timed_runs(forward, files[0], weights, ctx, args.warmup, args.repeat)
        if rank == 0:
            _report(outputs, latencies, args)
    try:
        barrier(ctx.world(), "the final barrier")
    except CollectiveError as exc:  # the work is done and rank 0's outputs are written
        log.warning("rank %d (%s): the final barrier failed after the work was done (%s); the "
                    "run's results stand", rank, devices[rank], " ".join(str(exc).split()))
    log.info("rank %d (%s): done", rank, devices[rank])
    return 0


def _run_generation(rank: int, forward: Forward, args: argparse.Namespace, where: tuple, weights: dict,
                    ctx: RankContext) -> int:
    """--generate: one generation request (rank 0 reads it), --warmup + --repeat times; rank 0 writes
    {"runs": [result, ...]} (runtime/generate.py) to --output as JSON."""
    bundle_dir, plan, host, port, token = where
    if not generate.is_generation_bundle(plan):
        raise UsageError(f"{bundle_dir} is not a generation bundle; compile it with galaxy-compile --max-len N")
    state = generate.load_generation_rank(rank, plan, bundle_dir, sys.modules[forward.__module__], weights)
    request = None
    if rank == 0:  # before joining, so a request the bundle cannot run fails fast and alone
        if not args.generate:
            raise UsageError("rank 0 needs the request: --generate REQUEST.json")
        request = generate.GenerationRequest.from_json(_read_json(args.generate))
        generate.check_request(request, plan["generation"])
    listener = socket.socket(fileno=args.master_fd) if args.master_fd is not None and rank == 0 else None
    rendezvous.connect(rank, ctx.world_size, host, port, args.connect_timeout or args.timeout, ctx.device_names,
                       token=token, plan_sha=auth.plan_digest(bundle_dir), listen_socket=listener)
    runs = []
    for run in range(args.warmup + args.repeat):
        barrier(ctx.world(), f"the barrier before generation {run}")
        result = generate.generate(state, request, ctx)
        if result is not None and run >= args.warmup:
            runs.append(result.to_json())
            log.info("generation %d: %d new tokens, time to first token %.1f ms, median time between tokens "
                     "%.2f ms", run, len(result.new_token_ids), 1e3 * result.ttft_s,
                     1e3 * statistics.median(result.tbt_s) if result.tbt_s else float("nan"))
    if rank == 0 and args.output:
        Path(args.output).write_text(json.dumps({"runs": runs}))
    try:
        barrier(ctx.world(), "the final barrier")
    except CollectiveError as exc:
        log.warning("rank %d: the final barrier failed after the work was done (%s)", rank, " ".join(str(exc).split()))
    return 0


def _read_json(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a JSON object")
    return data


def check_inputs(inputs: Mapping[str, torch.Tensor], example: Mapping[str, torch.Tensor],
                 what: str = "the input file") -> None:
    """The generated code is specialised to the example inputs' names, shapes and dtypes."""
    if set(inputs) != set(example):
        raise UsageError(f"{what} has tensors {sorted(inputs)}; this bundle takes {sorted(example)}")
    for name, tensor in example.items():
        got = inputs[name]
        if got.shape != tensor.shape or got.dtype != tensor.dtype:
            raise UsageError(
                f"input {name!r} is {list(got.shape)} {got.dtype}; this bundle was compiled for "
                f"{list(tensor.shape)} {tensor.dtype}: compile a bundle for this shape "
                f"(galaxy-compile --seq-len {got.shape[-1] if got.dim() else 1}) or pad the input")


def _timed_runs(forward, inputs, weights, ctx, warmup: int, repeat: int):
    latencies, outputs = [], None
    for run in range(warmup + repeat):
        barrier(ctx.world(), f"the barrier before run {run}")
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = forward(inputs, weights, ctx)
        ctx.handoff.flush()
        elapsed = time.perf_counter() - start
        if timing.ENABLED:
            log.info("rank %d: run %d: %s", ctx.rank, run, timing.describe(timing.take(), elapsed))
        if run >= warmup:
            latencies.append(elapsed)
        log.debug("rank %d: run %d took %.4f s", ctx.rank, run, elapsed)
    return latencies, outputs


def _streamed_runs(forward: Forward, stream: Stream, requests: list[dict], weights, ctx,
                   args: argparse.Namespace) -> list[StreamRun]:
    """Warmup requests one at a time, then one barrier and the stream, --repeat times."""
    _timed_runs(forward, requests[0], weights, ctx, args.warmup, 0)
    runs = []
    for run in range(args.repeat):
        barrier(ctx.world(), f"the barrier before stream {run}")
        runs.append(timed_stream(stream, requests, weights, ctx))
        log.debug("rank %d: stream %d took %.4f s", ctx.rank, run, runs[-1].wall_s)
    return runs


def _report_stream(runs: list[StreamRun], args: argparse.Namespace) -> None:
    for outputs in runs[-1].outputs:
        _check_outputs(outputs)
    rates = [run.requests_per_s for run in runs]
    latencies = [s for run in runs for s in run.latencies_s]
    log.info("%d requests streamed %d time(s): median %.3f requests/s; per-request latency median %.2f ms, "
             "max %.2f ms", len(runs[-1].outputs), len(runs), statistics.median(rates),
             1e3 * statistics.median(latencies), 1e3 * max(latencies))
    if args.output:
        bundle.save_tensors(args.output, {f"{i}/{name}": tensor for i, outputs in enumerate(runs[-1].outputs)
                                          for name, tensor in outputs.items()})
        log.info("wrote the outputs of %d requests to %s", len(runs[-1].outputs), args.output)
    if args.timings_json:
        Path(args.timings_json).write_text(json.dumps({
            "latencies_s": latencies, "median_s": statistics.median(latencies),
            "requests": len(runs[-1].outputs), "stream_s": [run.wall_s for run in runs],
            "requests_per_s": rates}))


def _check_outputs(outputs) -> None:
    if not isinstance(outputs, Mapping) or not outputs:
        raise GalaxyRuntimeError(f"forward returned {type(outputs).__name__} on rank 0, expected "
                                 "a dict of output tensors by name")


def _report(outputs, latencies: list[float], args: argparse.Namespace) -> None:
    _check_outputs(outputs)
    if latencies:
        log.info("latency over %d runs: median %.2f ms, min %.2f ms, max %.2f ms", len(latencies),
                 1e3 * statistics.median(latencies), 1e3 * min(latencies), 1e3 * max(latencies))
    if args.output:
        bundle.save_tensors(args.output, outputs)
        log.info("wrote outputs %s to %s", sorted(outputs), args.output)
    if args.timings_json:
        median = statistics.median(latencies) if latencies else None
        Path(args.timings_json).write_text(json.dumps({"latencies_s": latencies, "median_s": median}))


def find_bundle_dir(forward: Forward) -> Path:
    """The folder of the module that defines `forward` (the bundle root)."""
    code = getattr(forward, "__code__", None)
    if code is not None and Path(code.co_filename).is_file():
        return Path(code.co_filename).resolve().parent
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if main_file:
        return Path(main_file).resolve().parent
    raise UsageError("cannot tell which bundle this forward belongs to; run the rank module "
                     "from the bundle folder (python BUNDLE/rank_<k>.py ...)")


def _master(rank: int, world_size: int, args: argparse.Namespace) -> tuple[str, int]:
    env_rank, env_world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
    if env_rank is not None and env_rank.strip() != str(rank):
        raise UsageError(f"environment RANK={env_rank} but this module is rank_{rank}.py; "
                         f"run rank_{env_rank}.py on this device instead")
    if env_world is not None and env_world.strip() != str(world_size):
        raise UsageError(f"environment WORLD_SIZE={env_world} but the bundle's plan has "
                         f"{world_size} ranks")
    address = args.master
    if address is None and os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT"):
        address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    if address is None:
        raise UsageError("give --master HOST:PORT (the address of rank 0's device and a free port), "
                         "or set MASTER_ADDR and MASTER_PORT")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--master {address!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def _parse_args(rank: int, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"rank_{rank}.py",
                                     description=f"Run rank {rank} of a Galaxy bundle.")
    parser.add_argument("--master", metavar="HOST:PORT",
                        help="rank 0's address and a free port (default: MASTER_ADDR/MASTER_PORT)")
    parser.add_argument("--master-fd", type=_non_negative_int, metavar="FD",
                        help="rank 0: serve the rendezvous on this inherited listening socket "
                             "(the launcher binds and holds the port, so no other process takes it)")
    parser.add_argument("--serve", metavar="HOST:PORT",
                        help="stay up and serve requests from the galaxy-serve coordinator at HOST:PORT")
    parser.add_argument("--token-file", metavar="PATH",
                        help=f"read the cluster token from PATH ('-': one line of stdin; default: "
                             f"${auth.TOKEN_ENV})")
    parser.add_argument("--generate", metavar="REQUEST.json", nargs="?", const="",
                        help="generate tokens (a generation bundle): rank 0 reads the request {prompt_ids, "
                             "max_new_tokens, temperature, top_k, seed, stop_at_eos} and writes the result to "
                             "--output as JSON; the other ranks take --generate alone")
    parser.add_argument("--input", metavar="IN.safetensors", nargs="+",
                        help="input tensors by name, one file per request (rank 0; default: "
                             "inputs/example.safetensors)")
    parser.add_argument("--output", metavar="OUT.safetensors",
                        help="write the output tensors by name (rank 0)")
    parser.add_argument("--timeout", type=_positive_float, default=120.0, metavar="S",
                        help="give up on a peer after S seconds (default: 120)")
    parser.add_argument("--connect-timeout", type=_positive_float, metavar="S",
                        help="rendezvous timeout (default: --timeout)")
    parser.add_argument("--requests", type=_positive_int, metavar="M",
                        help="rank 0: stream M requests, the input files in turn (default: one per input "
                             "file); the other ranks take M from rank 0")
    parser.add_argument("--repeat", type=_positive_int, default=1, metavar="N",
                        help="timed forward runs, or streams of M requests (default: 1)")
    parser.add_argument("--warmup", type=_non_negative_int, default=0, metavar="N",
                        help="untimed forward runs first (default: 0)")
    parser.add_argument("--timings-json", metavar="PATH",
                        help="rank 0 writes {latencies_s, median_s} here")
    parser.add_argument("--threads", type=_non_negative_int, metavar="N",
                        help="torch.set_num_threads(N)")
    parser.add_argument("--log-level", default=os.environ.get("GALAXY_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser.parse_args(argv)


def _setup_logging(rank: int, level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format=f"%(asctime)s rank {rank} %(levelname)s %(name)s: %(message)s")


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value
