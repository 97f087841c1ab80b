"""galaxy-deploy: copy to each device only what it runs, over the system OpenSSH client, and
verify it there.

    galaxy-deploy BUNDLE --hosts HOSTS.toml [--check] [--serve [--port 8470] [--bind 127.0.0.1]]

For device k of the plan (host/hosts.py says how to reach it) the files go to
<dir>/<bundle name>-<plan sha>/: rank_<k>.py, weights/rank_<k>.safetensors, plan.json,
manifest.json, galaxy_runtime/ and the example inputs (the shapes requests must have), never
another rank's weights. Then `python -m galaxy_runtime.verify` runs there, with the device's
own Python, and checks every copied file against the manifest (and that the manifest is the
one sent). Devices are deployed in parallel; any failure is one line naming the device and
the fix. `--check` only verifies what is there; `--serve` goes on to `galaxy-serve --hosts`,
which starts the ranks over ssh from these copies.

Exit codes: 0 deployed and verified; 2 a device failed (the message names it).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from galaxy.host.hosts import Host, HostsFile, deployed_path
from galaxy.runtime import auth, bundle
from galaxy.runtime.errors import GalaxyRuntimeError

log = logging.getLogger(__name__)
COMMAND_TIMEOUT_S = 600.0  # one copy of a large weight shard over a slow link


class DeployError(GalaxyRuntimeError):
    """A device could not be deployed to or verified; the message names it."""


def device_files(bundle_dir: Path, rank: int) -> list[str]:
    """What rank `rank` needs on its device (relative paths), the manifest last."""
    files = bundle.rank_files(bundle_dir, rank)
    if (bundle_dir / bundle.EXAMPLE_INPUTS).is_file():
        files.append(bundle.EXAMPLE_INPUTS)
    return files + [bundle.MANIFEST]


def deploy(bundle_dir: str | Path, hosts: HostsFile, check_only: bool = False) -> dict[str, str]:
    """Deploy (or with check_only, verify) every device of the bundle's plan; {device: remote folder}."""
    bundle_dir = Path(bundle_dir).resolve()
    plan = bundle.load_plan(bundle_dir)
    bundle.verify_manifest(bundle_dir, [f for r in range(len(plan["plan"]["devices"]))
                                        for f in device_files(bundle_dir, r)[:-1]])
    sha = auth.plan_digest(bundle_dir)
    targets = hosts.for_plan(tuple(plan["plan"]["devices"]))
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(targets)) as pool:
        jobs = {host.name: pool.submit(_one_device, bundle_dir, rank, host, hosts, sha, check_only)
                for rank, host in enumerate(targets)}
        return {name: job.result() for name, job in jobs.items()}


def _one_device(bundle_dir: Path, rank: int, host: Host, hosts: HostsFile, sha: str, check_only: bool) -> str:
    folder = deployed_path(host.dir, bundle_dir, sha)
    files = device_files(bundle_dir, rank)
    if not check_only:
        _run(hosts.ssh(host, f"mkdir -p {shlex.quote(folder)}"), host, "create its bundle folder")
        with tempfile.TemporaryDirectory(prefix="galaxy-deploy-") as scratch:
            staged = _stage(bundle_dir, files, Path(scratch))
            _run(hosts.scp(host, staged, folder), host, f"copy {len(files)} files")
    verify = f"cd {shlex.quote(folder)} && {shlex.quote(host.python)} -B -m galaxy_runtime.verify {shlex.join(files[:-1])}"
    remote_manifest = _run(hosts.ssh(host, verify), host, "verify the copy against the manifest").strip()
    if remote_manifest != bundle.sha256_file(bundle_dir / bundle.MANIFEST):
        raise DeployError(f"{host.name} ({host.target}): {folder}/manifest.json is not this bundle's "
                          "manifest; deploy again")
    log.info("%s (rank %d): %d files %s in %s", host.name, rank, len(files),
             "verified" if check_only else "copied and verified", folder)
    return folder


def _stage(bundle_dir: Path, files: list[str], scratch: Path) -> list[Path]:
    """A copy of `files` in the bundle's layout; returns its top-level entries (what scp takes)."""
    for name in files:
        (scratch / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle_dir / name, scratch / name)
    return sorted(scratch.iterdir())


def _run(argv: list[str], host: Host, doing: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise DeployError(f"{host.name} ({host.target}): could not {doing} within {COMMAND_TIMEOUT_S:g} s") from exc
    except OSError as exc:
        raise DeployError(f"cannot run {argv[0]} ({exc}); install the OpenSSH client") from exc
    if done.returncode == 255:
        raise DeployError(f"{host.name}: cannot reach {host.target} port {host.port} over ssh to {doing} "
                          f"({_last_line(done.stderr)}); check its address, user and key (no password "
                          "prompts: the key must be authorised there)")
    if done.returncode != 0:
        raise DeployError(f"{host.name} ({host.target}): could not {doing}: {_last_line(done.stderr)}")
    return done.stdout


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    try:
        hosts = HostsFile.load(args.hosts)
        folders = deploy(args.bundle, hosts, check_only=args.check)
    except GalaxyRuntimeError as exc:
        sys.stderr.write(f"galaxy-deploy: error: {' '.join(str(exc).split())}\n")
        return 2
    sys.stderr.write(f"galaxy-deploy: {len(folders)} device(s) {'verified' if args.check else 'deployed'}: "
                     f"{', '.join(f'{name} {folder}' for name, folder in folders.items())}\n")
    if not args.serve:
        sys.stderr.write(f"serve it with: galaxy-serve {args.bundle} --hosts {args.hosts}\n")
        return 0
    from galaxy.serve.cli import main as serve_main

    return serve_main([args.bundle, "--hosts", args.hosts, "--port", str(args.port), "--bind", args.bind])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="galaxy-deploy", description="Copy a bundle to its devices over ssh.")
    parser.add_argument("bundle", help="bundle folder made by galaxy-compile")
    parser.add_argument("--hosts", required=True, metavar="HOSTS.toml", help="how to reach each device")
    parser.add_argument("--check", action="store_true", help="only verify the copies already there")
    parser.add_argument("--serve", action="store_true", help="then run galaxy-serve --hosts on them")
    parser.add_argument("--port", type=int, default=8470, help="with --serve: HTTP port (default 8470)")
    parser.add_argument("--bind", default="127.0.0.1", help="with --serve: HTTP address (default 127.0.0.1)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
