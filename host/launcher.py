"""galaxy-run: start every rank of a bundle, supervise them, report latency and accuracy.

    galaxy-run BUNDLE --local [--input IN [IN ...]] [--output OUT] [--requests M] [--repeat N]
                              [--warmup N] [--timeout S] [--threads N] [--overall-timeout S]
    galaxy-run BUNDLE --emulate [--cluster-json CLUSTER.json] [same options]
    galaxy-run BUNDLE (--local | --emulate) --requests N --inject SPEC [--inject SPEC ...] [--output OUT]

`--local` runs each rank as `python BUNDLE/rank_<k>.py --master 127.0.0.1:<free port>` on
this machine. `--requests M` streams M requests (the input files in turn, default the
example input) through the pipeline stages and reports requests/s. `--inject` kills, slows or
cuts off devices at chosen requests and runs the ranks as galaxy-serve does, so the run re-plans
around them (serve/trial.py, docs/FAULTS.md).

`run_ranks` is the mechanism both modes share, given a Placement (host/placement.py): over
loopback, or from an emulator (host/emulate.py, `--emulate`) with its own master address, a
command wrapper that starts a rank inside its network namespace and cgroup, and per-rank
environment (GLOO_SOCKET_IFNAME).

Exit codes: 0 success; 2 a rank or the launcher failed (one line on stderr names the rank);
3 outputs differ from the bundle's reference beyond tolerance; 130 interrupted.
"""
from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from galaxy.host.placement import Placement, loopback_threads, on_emulated_devices, on_loopback
from galaxy.host.processes import OnLine, child_env, cli_exit_code, last_words, pump, start_rank, stop_processes
from galaxy.serve.compare import output_errors
from galaxy.serve.session import add_arguments, check_arguments
from galaxy.runtime import auth, bundle
from galaxy.runtime.entry import EXIT_PEER_FAILED
from galaxy.runtime.errors import GalaxyRuntimeError, UsageError

log = logging.getLogger(__name__)

# (atol, rtol) for comparing with reference/outputs.safetensors, by the plan's wire dtype.
# fp16 on the wire measured a max error of 2e-3 on BERT-large, bf16 about 4x that (DESIGN.md).
TOLERANCE_BY_WIRE_DTYPE = {"float32": (1e-4, 1e-4), "float16": (1e-2, 1e-2),
                           "bfloat16": (4e-2, 4e-2)}
EXIT_OK, EXIT_FAILED, EXIT_MISMATCH, EXIT_INTERRUPTED = 0, 2, 3, 130
_BLAME_GRACE_S = 2.0  # after a first failure, how long to wait for the rank that caused it

InputPaths = str | Path | Sequence[str | Path] | None  # one input file, or one per request


class LaunchError(GalaxyRuntimeError):
    """A rank failed or overran; `rank` names it (None when no single rank is to blame)."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


@dataclass
class RunResult:
    outputs: dict[str, torch.Tensor]  # of the (first) request
    latencies_s: list[float]  # per run, or per request when requests streamed
    max_abs_error: dict[str, float] | None  # vs the reference, when it was compared (worst request)
    within_tolerance: bool | None = None
    tolerance: tuple[float, float] | None = None  # (atol, rtol) used for the comparison
    request_outputs: list[dict[str, torch.Tensor]] | None = None  # streamed: every request's outputs
    requests_per_s: list[float] | None = None  # streamed: one per stream (--repeat)
    expected_error: dict[str, float] | None = None  # plan.json's, measured at compile time (reduced wire dtype)

    @property
    def median_s(self) -> float:
        return statistics.median(self.latencies_s)


def run_local(bundle_dir: str | Path, *, input_path: InputPaths = None,
              output_path: str | Path | None = None, requests: int | None = None, repeat: int = 1, warmup: int = 0,
              timeout_s: float = 120.0, env: Mapping[str, str] | None = None,
              threads: int | None = None, overall_timeout_s: float | None = None,
              on_line: OnLine | None = None) -> RunResult:
    """Run every rank of the bundle on this machine over loopback.

    `threads` defaults to the machine's cores divided among the ranks (at least 1), so the
    ranks do not oversubscribe the CPU.
    """
    if threads is None:
        threads = loopback_threads(len(bundle.load_plan(bundle_dir)["plan"]["devices"]))
    with on_loopback() as placement:
        return run_ranks(bundle_dir, placement, input_path=input_path, output_path=output_path,
                         requests=requests, repeat=repeat, warmup=warmup, timeout_s=timeout_s, env=env,
                         threads=threads, overall_timeout_s=overall_timeout_s, on_line=on_line)


def run_emulated(bundle_dir: str | Path, *, cluster: Mapping | None = None,
                 input_path: InputPaths = None, output_path: str | Path | None = None,
                 requests: int | None = None, repeat: int = 1, warmup: int = 0, timeout_s: float = 120.0,
                 env: Mapping[str, str] | None = None, threads: int | None = None,
                 overall_timeout_s: float | None = None,
                 on_line: OnLine | None = None, cpu_mode: str = "auto",
                 shared_nic: bool | None = None) -> RunResult:
    """Run every rank in an emulated device of its own: network namespace, shaped links, CPU
    share (host/emulate.py, docs/EMULATION.md). Needs root; raises EmulationUnavailable
    (with the reason) when this machine cannot emulate.

    `cluster` is plan.json's cluster layout ({"devices": [{"name", "cpu_share"}],
    "default_link": {...}, "link_overrides": [...]}); default: the bundle's own. `threads`
    defaults per rank to its cpu_share rounded (at least 1). `cpu_mode`: weight | quota | auto
    (how a device gets its CPU share); `shared_nic`: one network card a device (default: the
    cluster's `shared_card`).
    """
    with on_emulated_devices(bundle_dir, cluster, threads=threads, cpu_mode=cpu_mode,
                             shared_nic=shared_nic) as placement:
        return run_ranks(bundle_dir, placement, input_path=input_path, output_path=output_path,
                         requests=requests, repeat=repeat, warmup=warmup, timeout_s=timeout_s, env=env,
                         threads=threads, overall_timeout_s=overall_timeout_s, on_line=on_line)


def run_ranks(bundle_dir: str | Path, placement: Placement, *, input_path: InputPaths = None,
              output_path: str | Path | None = None, requests: int | None = None, repeat: int = 1,
              warmup: int = 0, timeout_s: float = 120.0, env: Mapping[str, str] | None = None,
              threads: int | None = None, overall_timeout_s: float | None = None,
              on_line: OnLine | None = None) -> RunResult:
    """Start one process per rank where `placement` puts them, wait for all, kill all if one
    fails; collect the results.

    `requests` > 1 streams that many requests (the input files in turn; default one per file)
    `repeat` times. The ranks prove the cluster token of `env` or of this process's environment
    (GALAXY_CLUSTER_TOKEN), else a fresh one made for this run. The overall timeout defaults to
    timeout_s * (2 + warmup + repeat * requests).
    """
    bundle_dir = Path(bundle_dir).resolve()
    plan = bundle.load_plan(bundle_dir)
    devices = list(plan["plan"]["devices"])
    for rank in range(len(devices)):
        if not (bundle_dir / bundle.rank_module(rank)).is_file():
            raise UsageError(f"{bundle_dir} lacks {bundle.rank_module(rank)}; is it a Galaxy bundle?")
    inputs = _input_paths(input_path)
    requests = requests or max(1, len(inputs))
    overall = overall_timeout_s or timeout_s * (2 + warmup + repeat * requests)
    with tempfile.TemporaryDirectory(prefix="galaxy-run-") as scratch:
        outputs_file = Path(output_path) if output_path else Path(scratch) / "outputs.safetensors"
        timings_file = Path(scratch) / "timings.json"
        common = ["--timeout", f"{timeout_s:g}", "--requests", str(requests), "--repeat", str(repeat),
                  "--warmup", str(warmup), *(["--threads", str(threads)] if threads else [])]
        commands = []
        for rank in range(len(devices)):
            argv = [sys.executable, "-u", str(bundle_dir / bundle.rank_module(rank)), *placement.master_args(rank),
                    *common]
            if rank == 0:
                argv += ["--output", str(outputs_file), "--timings-json", str(timings_file)]
                if inputs:
                    argv += ["--input", *inputs]
            commands.append(placement.command(rank, argv))
        env = with_token(env)
        envs = [child_env(env, placement.env(rank)) for rank in range(len(devices))]
        fds = [placement.inherited_fds(rank) for rank in range(len(devices))]
        supervise(commands, envs, fds, devices, overall, on_line or _log_line(devices))
        result = _read_result(bundle.load_tensors(outputs_file), json.loads(timings_file.read_text()), requests)
    reference = bundle_dir / bundle.REFERENCE_OUTPUTS
    if not inputs and reference.is_file():
        wire = plan.get("wire_dtype", "float32")
        compare_with_reference(result, bundle.load_tensors(reference),
                               TOLERANCE_BY_WIRE_DTYPE.get(wire, TOLERANCE_BY_WIRE_DTYPE["float32"]))
        result.expected_error = plan.get("expected_max_abs_error")
    return result


def _input_paths(input_path: InputPaths) -> list[str]:
    if input_path is None:
        return []
    paths = [input_path] if isinstance(input_path, (str, Path)) else list(input_path)
    return [str(Path(p).resolve()) for p in paths]


def _read_result(saved: dict[str, torch.Tensor], timings: dict, requests: int) -> RunResult:
    """Rank 0's outputs file and timings; a stream's outputs are saved as `i/name` per request."""
    if requests == 1:
        return RunResult(saved, timings["latencies_s"], None)
    per_request: list[dict[str, torch.Tensor]] = [{} for _ in range(requests)]
    for key, tensor in saved.items():
        i, name = key.split("/", 1)
        per_request[int(i)][name] = tensor
    return RunResult(per_request[0], timings["latencies_s"], None, request_outputs=per_request,
                     requests_per_s=timings["requests_per_s"])


def compare_with_reference(result: RunResult, reference: Mapping[str, torch.Tensor],
                           tolerance: tuple[float, float]) -> None:
    """Fill result.max_abs_error / within_tolerance (torch.allclose with atol, rtol); with several
    requests (all of the example input), the worst request counts."""
    errors, within = {}, True
    for outputs in result.request_outputs or [result.outputs]:
        request_errors, request_within = output_errors(outputs, reference, tolerance)
        errors = {name: max(error, errors.get(name, 0.0)) for name, error in request_errors.items()}
        within = within and request_within
    result.max_abs_error, result.within_tolerance, result.tolerance = errors, within, tolerance


def with_token(env: Mapping[str, str] | None) -> dict[str, str]:
    """`env` with a cluster token: its own, this process's, or a fresh one for this run."""
    env = dict(env or {})
    if not env.get(auth.TOKEN_ENV) and not os.environ.get(auth.TOKEN_ENV):
        env[auth.TOKEN_ENV] = auth.new_token()
    return env


# --- supervision -------------------------------------------------------------------------------

def _log_line(devices: list[str]) -> OnLine:
    def emit(rank: int, line: str) -> None:
        log.info("[rank %d %s] %s", rank, devices[rank], line)
    return emit


def supervise(commands: list[list[str]], envs: list[dict], fds: list[list[int]], devices: list[str],
               overall_timeout_s: float, on_line: OnLine) -> None:
    procs: list[subprocess.Popen] = []
    tails = [collections.deque(maxlen=30) for _ in commands]
    readers = []
    try:
        for rank, (command, rank_env) in enumerate(zip(commands, envs)):
            proc = start_rank(command, rank_env, fds[rank])
            procs.append(proc)
            reader = threading.Thread(target=pump, args=(proc, rank, tails[rank], on_line),
                                      daemon=True)
            reader.start()
            readers.append(reader)
        failed = _wait_all(procs, overall_timeout_s, devices)
        if failed is not None:
            stop_processes(procs)
            rank, code = failed
            for reader in readers:
                reader.join(timeout=2)
            raise LaunchError(f"rank {rank} ({devices[rank]}) failed with exit code {code}: "
                              f"{last_words(tails[rank])}", rank)
    finally:
        stop_processes(procs)
        for reader in readers:
            reader.join(timeout=2)


def _wait_all(procs, overall_timeout_s: float, devices: list[str]) -> tuple[int, int] | None:
    """None when all exit 0; else (rank, exit code) of the rank to blame.

    A rank that lost a peer exits with EXIT_PEER_FAILED, often before the peer that crashed
    has finished printing its traceback; so after a first failure we wait briefly for a
    failure of another kind and blame that one.
    """
    deadline = time.monotonic() + overall_timeout_s
    while True:
        codes = [proc.poll() for proc in procs]
        if any(code not in (None, 0) for code in codes):
            return _blame(procs, codes)
        if all(code == 0 for code in codes):
            return None
        if time.monotonic() > deadline:
            running = [f"rank {r} ({devices[r]})" for r, code in enumerate(codes) if code is None]
            stop_processes(procs)
            raise LaunchError(f"{', '.join(running)} still running after the overall timeout of "
                              f"{overall_timeout_s:g} s; killed every rank (raise --overall-timeout "
                              "if the model is just slow)")
        time.sleep(0.05)


def _blame(procs, codes: list[int | None]) -> tuple[int, int]:
    failures = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
    grace_end = time.monotonic() + _BLAME_GRACE_S
    while all(code == EXIT_PEER_FAILED for _, code in failures) and time.monotonic() < grace_end:
        time.sleep(0.05)
        failures += [(rank, proc.poll()) for rank, proc in enumerate(procs)
                     if rank not in dict(failures) and proc.poll() not in (None, 0)]
    own = [(rank, code) for rank, code in failures if code != EXIT_PEER_FAILED]
    return (own or failures)[0]


# --- command line --------------------------------------------------------------------------------

def _run_emulated(bundle_dir: Path, cluster_json: str | None = None, cpu_mode: str = "auto",
                  shared_nic: bool | None = None, **options) -> RunResult:
    """run_emulated; on a machine that cannot emulate, warn and run on loopback instead."""
    from galaxy.host.emulate import EmulationUnavailable

    cluster = _read_cluster_json(Path(cluster_json)) if cluster_json else None
    try:
        return run_emulated(bundle_dir, cluster=cluster, cpu_mode=cpu_mode, shared_nic=shared_nic, **options)
    except EmulationUnavailable as exc:
        log.warning("galaxy-run: WARNING: cannot emulate the cluster here (%s); running every "
                    "rank on loopback instead, so times are this machine's, not the cluster's",
                    exc)
        return run_local(bundle_dir, **options)


def _read_cluster_json(path: Path) -> dict:
    """A cluster as JSON (Cluster.to_json()), or a plan.json whose 'cluster' is used."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--cluster-json {path}: {exc}") from exc
    cluster = data.get("cluster", data) if isinstance(data, dict) else None
    if not isinstance(cluster, dict) or "devices" not in cluster or "default_link" not in cluster:
        raise UsageError(f"--cluster-json {path}: expected a cluster with 'devices' and "
                         "'default_link' (the layout of plan.json's 'cluster')")
    return cluster


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(message)s")
    options = dict(input_path=args.input, output_path=args.output, requests=args.requests,
                   repeat=args.repeat,
                   warmup=args.warmup, timeout_s=args.timeout, threads=args.threads,
                   overall_timeout_s=args.overall_timeout)

    def run() -> int:
        if args.inject:
            return _run_trial(args)
        if args.emulate:
            nic = None if args.nic is None else args.nic == "shared"
            result = _run_emulated(Path(args.bundle), cluster_json=args.cluster_json, cpu_mode=args.cpu_mode,
                                   shared_nic=nic, **options)
        else:
            result = run_local(args.bundle, **options)
        print(_summary(result, args.output))
        return EXIT_MISMATCH if result.within_tolerance is False else EXIT_OK
    return cli_exit_code("galaxy-run", run)  # a terminated galaxy-run stops its ranks first


def _run_trial(args: argparse.Namespace) -> int:
    from galaxy.serve.session import ServeOptions
    from galaxy.serve.trial import run_trial

    options = ServeOptions.from_args(args, "emulate" if args.emulate else "local")
    result = run_trial(args.bundle, options, args.requests, args.input, args.output)
    print(result.describe())
    if any(r.error for r in result.requests):
        return EXIT_FAILED
    return EXIT_OK if result.all_matched else EXIT_MISMATCH


def _summary(result: RunResult, output: str | None) -> str:
    lat = result.latencies_s
    if result.requests_per_s:
        rows = [f"throughput: {statistics.median(result.requests_per_s):.3f} requests/s "
                f"({len(result.request_outputs)} requests streamed, median of {len(result.requests_per_s)} stream(s))",
                f"latency per request: median {1e3 * result.median_s:.2f} ms "
                f"(min {1e3 * min(lat):.2f} ms, max {1e3 * max(lat):.2f} ms)"]
    else:
        rows = [f"latency: median {1e3 * result.median_s:.2f} ms over {len(lat)} run(s) "
                f"(min {1e3 * min(lat):.2f} ms, max {1e3 * max(lat):.2f} ms)"]
    if output and result.request_outputs:
        rows.append(f"outputs of {len(result.request_outputs)} requests written to {output} "
                    f"(request i's output NAME as i/NAME)")
    elif output:
        rows.append(f"outputs {sorted(result.outputs)} written to {output}")
    if result.max_abs_error is not None:
        atol, rtol = result.tolerance
        verdict = "within" if result.within_tolerance else "NOT within"
        rows.append(f"vs reference ({verdict} atol={atol:g}, rtol={rtol:g}):")
        expected = result.expected_error or {}
        rows += [f"  {name}: max abs error {err:.3g}"
                 + (f" (expected {expected[name]:.2g} from the wire dtype)" if name in expected else "")
                 for name, err in result.max_abs_error.items()]
    return "\n".join(rows)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="galaxy-run", description="Run a Galaxy bundle.")
    parser.add_argument("bundle", help="bundle folder made by galaxy-compile")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--local", action="store_true", help="every rank on this machine (loopback)")
    mode.add_argument("--emulate", action="store_true",
                      help="every rank in its own emulated device (network namespace, cgroup)")
    parser.add_argument("--input", metavar="IN.safetensors", nargs="+",
                        help="input tensors by name, one file per request (default: the bundle's example inputs)")
    parser.add_argument("--output", metavar="OUT.safetensors", help="write output tensors by name")
    parser.add_argument("--requests", type=int, metavar="M",
                        help="stream M requests through the pipeline stages, the input files in turn "
                             "(default: one per input file)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="timed runs, or streams of M requests (default 1)")
    parser.add_argument("--warmup", type=int, default=0, metavar="N", help="untimed runs first")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="a rank gives up on a peer after S seconds (default 120)")
    parser.add_argument("--overall-timeout", type=float, metavar="S",
                        help="kill every rank after S seconds (default: timeout x (2 + runs))")
    parser.add_argument("--threads", type=int, metavar="N", help="torch threads per rank")
    parser.add_argument("--cluster-json", metavar="CLUSTER.json",
                        help="with --emulate: the cluster to emulate (default: plan.json's)")
    parser.add_argument("--cpu-mode", choices=["auto", "weight", "quota"], default="auto",
                        help="with --emulate: how a device gets its CPU share: weight (a CPU of its own beside a "
                             "busy filler), quota (a CFS quota, as a device busy with other work), auto (weight "
                             "when every device fits on a CPU of its own)")
    parser.add_argument("--nic", choices=["per-pair", "shared"],
                        help="with --emulate: every pair of devices at its link's rate, or one network card a "
                             "device shared by its transfers (default: the cluster's links.card)")
    parser.add_argument("--quiet", action="store_true", help="do not stream the ranks' logs")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.timeout <= 0 or (args.requests is not None and args.requests < 1):
        parser.error("--requests and --repeat must be >= 1, --warmup >= 0 and --timeout > 0")
    if (args.cluster_json or args.nic or args.cpu_mode != "auto") and not args.emulate:
        parser.error("--cluster-json, --cpu-mode and --nic only apply with --emulate")
    check_arguments(parser, args)
    if args.inject and (args.requests is None or args.repeat != 1 or args.warmup):
        parser.error("--inject needs --requests N (the requests go one after another) and no --repeat or --warmup")
    return args


if __name__ == "__main__":
    sys.exit(main())
