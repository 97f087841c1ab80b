"""galaxy-serve: keep a bundle's ranks up and answer requests over HTTP.

    galaxy-serve BUNDLE (--local | --emulate | --hosts HOSTS.toml) [--port 8470] [--bind 127.0.0.1]
                 [--timeout S] [--heartbeat S] [--dead-after S] [--connect-timeout S]
                 [--threads N] [--cluster-json CLUSTER.json] [--token-file PATH] [--tokenizer DIR] [--quiet]
                 [--inject SPEC ...] [--model MODEL] [--no-recovery] [recovery settings]

Starts every rank (serve/ranks.py), forms the group, then serves HTTP (serve/http.py) until
SIGINT or SIGTERM; then it tells every rank to stop, stops whatever is left and removes the
emulated devices. A lost or straggling device is re-planned around (serve/recovering.py,
docs/FAULTS.md); --inject tries that out. The cluster token comes from --token-file, GALAXY_CLUSTER_TOKEN or, with
--hosts, the hosts file; --local and --emulate make a fresh one when none is set (then
POST /v1/plan cannot be used). A generation bundle (galaxy-compile --max-len) answers
POST /v1/generate and the OpenAI-style POST /v1/completions (serve/generation.py); --tokenizer
(a local checkpoint folder) lets them take and give text.

Exit codes: 0 stopped by SIGTERM/SIGHUP (how a server is normally stopped); 2 could not start
(one line names the cause); 130 Ctrl-C.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from galaxy.host.processes import cli_exit_code
from galaxy.host.tokenizer import Tokenizer
from galaxy.runtime import auth, rendezvous

from .bundles import HostBundle
from .session import ServeOptions, add_arguments, check_arguments, serving

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
    mode = "hosts" if args.hosts else "emulate" if args.emulate else "local"
    with contextlib.closing(http_socket), serving(plan, ServeOptions.from_args(args, mode)) as coordinator:
        host, port = http_socket.getsockname()[:2]
        routes = "POST /v1/generate, POST /v1/completions" if "generation" in plan.plan else "POST /v1/infer"
        sys.stderr.write(f"galaxy-serve: serving {plan.describe()} on http://{host}:{port} "
                         f"({routes}, GET /healthz, GET /metrics); Ctrl-C stops\n")
        sys.stderr.flush()
        server = uvicorn.Server(uvicorn.Config(make_app(coordinator, tokenizer), log_level="warning", lifespan="off",
                                               timeout_graceful_shutdown=5))
        server.run(sockets=[http_socket])


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
    parser.add_argument("--connect-timeout", type=float, default=120.0, metavar="S",
                        help="how long the ranks have to start and connect (default 120)")
    parser.add_argument("--threads", type=int, metavar="N", help="--local: torch threads per rank")
    parser.add_argument("--cluster-json", metavar="CLUSTER.json", help="--emulate: the cluster to emulate")
    parser.add_argument("--token-file", metavar="PATH", help=f"the cluster token (default ${auth.TOKEN_ENV})")
    parser.add_argument("--tokenizer", metavar="DIR", help="a generation bundle: the local checkpoint folder whose "
                                                          "tokenizer turns text prompts into ids and new ids into text")
    parser.add_argument("--quiet", action="store_true", help="log warnings and errors only")
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be > 0")
    check_arguments(parser, args)
    return args


if __name__ == "__main__":
    sys.exit(main())
