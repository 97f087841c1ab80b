"""galaxy-serve: keep a bundle's ranks up and answer requests over HTTP.

    galaxy-serve BUNDLE (--local | --emulate | --hosts HOSTS.toml) [--port 8470] [--bind 127.0.0.1]
                 [--timeout S] [--heartbeat S] [--dead-after S] [--connect-timeout S]
                 [--threads N] [--cluster-json CLUSTER.json] [--token-file PATH] [--tokenizer DIR] [--quiet]

Starts every rank (serve/ranks.py), forms the group, then serves HTTP (serve/http.py) until
SIGINT or SIGTERM; then it tells every rank to stop, stops whatever is left and removes the
emulated devices. The cluster token comes from --token-file, GALAXY_CLUSTER_TOKEN or, with
--hosts, the hosts file; --local and --emulate make a fresh one when none is set (then
POST /v1/plan cannot be used). A generation bundle (galaxy-compile --max-len) answers
POST /v1/generate and the OpenAI-style POST /v1/completions (serve/generation.py); --tokenizer
(a local checkpoint folder) lets them take and give text.

Exit codes: 0 stopped by SIGTERM/SIGHUP (how a server is normally stopped); 2 could not start
(one line names the cause); 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from galaxy.host.processes import cli_exit_code
from galaxy.runtime import auth, rendezvous
from galaxy.runtime.errors import UsageError

from .bundles import HostBundle
from .coordinator import Coordinator, ServiceUnavailable
from galaxy.host.tokenizer import Tokenizer

log = logging.getLogger("galaxy.serve")
EXIT_OK = 0


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(message)s")
    return cli_exit_code("galaxy-serve", lambda: serve(args) or EXIT_OK, terminated_ok=True)


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    from .http import make_app

    plan = HostBundle.load(args.bundle)
    tokenizer = Tokenizer.load(args.tokenizer) if args.tokenizer else None
    http_socket = rendezvous.listen(args.bind, args.port)  # a port in use fails before any rank starts
    with contextlib.ExitStack() as stack:
        stack.callback(http_socket.close)
        cluster = stack.enter_context(_ranks(args, plan))
        control = cluster.listener.getsockname()
        sys.stderr.write(f"galaxy-serve: the coordinator listens for ranks on {control[0]}:{control[1]}\n")
        coordinator = Coordinator(plan, cluster.token, cluster.listener, cluster.placement,
                                  heartbeat_s=args.heartbeat, dead_after_s=args.dead_after, timeout_s=args.timeout,
                                  connect_timeout_s=args.connect_timeout,
                                  exit_status=cluster.processes.exit_status)
        stack.callback(coordinator.close)
        try:
            coordinator.start().result(timeout=args.connect_timeout + 3 * args.timeout)
        except concurrent.futures.TimeoutError as exc:
            raise ServiceUnavailable(f"the ranks did not form a group within {args.connect_timeout + 3 * args.timeout:g} s; "
                                     "see their log lines above") from exc
        host, port = http_socket.getsockname()[:2]
        routes = "POST /v1/generate, POST /v1/completions" if "generation" in plan.plan else "POST /v1/infer"
        sys.stderr.write(f"galaxy-serve: serving {plan.describe()} on http://{host}:{port} "
                         f"({routes}, GET /healthz, GET /metrics); Ctrl-C stops\n")
        sys.stderr.flush()
        server = uvicorn.Server(uvicorn.Config(make_app(coordinator, tokenizer), log_level="warning", lifespan="off",
                                               timeout_graceful_shutdown=5))
        server.run(sockets=[http_socket])


def _ranks(args: argparse.Namespace, plan: HostBundle):
    from . import ranks

    if args.hosts:
        from galaxy.host.hosts import HostsFile

        return ranks.ssh_ranks(plan, HostsFile.load(args.hosts), args.timeout)
    token = auth.load_token(args.token_file) if args.token_file or os.environ.get(auth.TOKEN_ENV) \
        else auth.new_token().encode()
    if args.emulate:
        cluster = _read_cluster(args.cluster_json) if args.cluster_json else None
        return ranks.emulated_ranks(plan, token, args.timeout, cluster)
    return ranks.local_ranks(plan, token, args.timeout, args.threads)


def _read_cluster(path: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--cluster-json {path}: {exc}") from exc
    return data.get("cluster", data)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="galaxy-serve", description="Serve a Galaxy bundle over HTTP.")
    parser.add_argument("bundle", help="bundle folder made by galaxy-compile")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--local", action="store_true", help="every rank a process on this machine")
    mode.add_argument("--emulate", action="store_true", help="every rank in an emulated device (root)")
    mode.add_argument("--hosts", metavar="HOSTS.toml",
                      help="every rank on its device over ssh, from the copy galaxy-deploy made")
    parser.add_argument("--port", type=int, default=8470, help="HTTP port (default 8470; 0: any free port)")
    parser.add_argument("--bind", default="127.0.0.1", help="HTTP address (default 127.0.0.1)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="a rank gives up on a peer during a request after S seconds (default 60)")
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="S",
                        help="heartbeat interval between the coordinator and every rank (default 1)")
    parser.add_argument("--dead-after", type=float, default=5.0, metavar="S",
                        help="a rank or the coordinator silent this long is lost (default 5)")
    parser.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                        help="how long the ranks have to start and connect (default 120)")
    parser.add_argument("--threads", type=int, metavar="N", help="--local: torch threads per rank")
    parser.add_argument("--cluster-json", metavar="CLUSTER.json", help="--emulate: the cluster to emulate")
    parser.add_argument("--token-file", metavar="PATH", help=f"the cluster token (default ${auth.TOKEN_ENV})")
    parser.add_argument("--tokenizer", metavar="DIR", help="a generation bundle: the local checkpoint folder whose "
                                                          "tokenizer turns text prompts into ids and new ids into text")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    args = parser.parse_args(argv)
    if args.timeout <= 0 or args.heartbeat <= 0 or args.dead_after <= args.heartbeat:
        parser.error("--timeout and --heartbeat must be > 0 and --dead-after > --heartbeat")
    return args


if __name__ == "__main__":
    sys.exit(main())
