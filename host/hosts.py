"""The hosts file: how to reach each device over SSH, kept apart from the cluster file and never
written into plan.json.

    # hosts.toml
    token_file = "cluster.token"   # optional (else GALAXY_CLUSTER_TOKEN); relative to this file
    coordinator = "192.168.1.10"   # optional: the address the devices reach galaxy-serve at
    known_hosts = "known_hosts"    # optional: ssh's known-hosts file (new host keys are kept)

    [devices.desktop]              # a device name of the plan
    address = "192.168.1.11"
    user = "galaxy"                # default: ssh's choice (your user name)
    port = 22                      # default 22
    key = "~/.ssh/galaxy_ed25519"  # default: ssh's choice
    dir = "/srv/galaxy"            # bundles go to <dir>/<bundle name>-<plan sha>
    python = "python3"             # an interpreter with torch and safetensors (default python3)
    env = { GLOO_SOCKET_IFNAME = "eth0" }  # optional: environment of the rank there

Paths are relative to the hosts file's folder. Commands go through the system OpenSSH client
with BatchMode (never a password prompt: a missing key is an error, not a hang) and a
connect timeout.
"""
from __future__ import annotations

import shlex
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from galaxy.runtime import auth
from galaxy.runtime.errors import UsageError

CONNECT_TIMEOUT_S = 10


class HostsFileError(UsageError):
    """The hosts file is missing, malformed or lacks a device the plan needs."""


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    dir: str
    user: str | None = None
    port: int = 22
    key: Path | None = None
    python: str = "python3"
    env: tuple[tuple[str, str], ...] = ()

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}" if self.user else self.address


@dataclass(frozen=True)
class HostsFile:
    path: Path
    hosts: dict[str, Host]
    token_file: Path | None = None
    coordinator: str | None = None
    known_hosts: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "HostsFile":
        path = Path(path).resolve()
        try:
            data = tomllib.loads(path.read_text())
        except OSError as exc:
            raise HostsFileError(f"cannot read the hosts file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise HostsFileError(f"the hosts file {path} is not valid TOML: {exc}") from exc
        devices = data.get("devices")
        if not isinstance(devices, dict) or not devices:
            raise HostsFileError(f"the hosts file {path} has no [devices.NAME] tables")
        hosts = {name: _host(path, name, entry) for name, entry in devices.items()}
        unknown = set(data) - {"devices", "token_file", "coordinator", "known_hosts"}
        if unknown:
            raise HostsFileError(f"the hosts file {path} has unknown keys {sorted(unknown)}")
        return cls(path, hosts, _path(path, data.get("token_file")), data.get("coordinator"),
                   _path(path, data.get("known_hosts")))

    def for_plan(self, devices: tuple[str, ...]) -> list[Host]:
        """The hosts of the plan's devices, in rank order."""
        missing = [name for name in devices if name not in self.hosts]
        if missing:
            raise HostsFileError(f"the hosts file {self.path} lacks [devices.{missing[0]}] (the plan runs on "
                                 f"{list(devices)}; it has {sorted(self.hosts)})")
        return [self.hosts[name] for name in devices]

    def token(self) -> bytes:
        return auth.load_token(self.token_file)

    def ssh(self, host: Host, remote_command: str) -> list[str]:
        """argv running `remote_command` (a shell line) on `host`."""
        return ["ssh", *self._options(host), "-p", str(host.port), host.target, remote_command]

    def scp(self, host: Host, sources: list[Path], remote_dir: str) -> list[str]:
        """argv copying `sources` (files or folders, recursively) into `remote_dir` on `host`."""
        return ["scp", "-q", "-r", *self._options(host), "-P", str(host.port), *map(str, sources),
                f"{host.target}:{shlex.quote(remote_dir)}/"]

    def coordinator_address(self, hosts: list[Host]) -> str:
        """The address the devices reach this machine at: the hosts file's `coordinator`, else
        the local address this machine routes to the devices from (the same for all)."""
        if self.coordinator:
            return self.coordinator
        found = {_local_address_towards(host) for host in hosts}
        if len(found) != 1:
            raise HostsFileError(f"this machine reaches the devices from several addresses {sorted(found)}; "
                                 f"set coordinator = \"ADDRESS\" in {self.path}")
        return found.pop()

    def _options(self, host: Host) -> list[str]:
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                   "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=accept-new"]
        if host.key:
            options += ["-i", str(host.key), "-o", "IdentitiesOnly=yes"]
        return options


def deployed_path(folder: str, bundle_path: Path, plan_sha: str) -> str:
    """Where galaxy-deploy puts a bundle on a device: one folder per bundle and plan."""
    return str(PurePosixPath(folder) / f"{Path(bundle_path).name}-{plan_sha[:12]}")


def _host(path: Path, name: str, entry) -> Host:
    if not isinstance(entry, dict):
        raise HostsFileError(f"[devices.{name}] in {path} must be a table")
    for key in ("address", "dir"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise HostsFileError(f"[devices.{name}] in {path} needs {key} = \"...\"")
    unknown = set(entry) - {"address", "dir", "user", "port", "key", "python", "env"}
    if unknown:
        raise HostsFileError(f"[devices.{name}] in {path} has unknown keys {sorted(unknown)}")
    port = entry.get("port", 22)
    if not isinstance(port, int) or not 0 < port < 65536:
        raise HostsFileError(f"[devices.{name}] in {path}: port must be 1-65535, got {port!r}")
    env = entry.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise HostsFileError(f"[devices.{name}] in {path}: env must be a table of strings")
    return Host(name, entry["address"], entry["dir"], entry.get("user"), port, _path(path, entry.get("key")),
                entry.get("python", "python3"), tuple(sorted(env.items())))


def _path(hosts_file: Path, value) -> Path | None:
    if value is None:
        return None
    return (hosts_file.parent / Path(value).expanduser()).resolve()


def _local_address_towards(host: Host) -> str:
    with socket.socket(socket.AF_INET6 if ":" in host.address else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((host.address, host.port))  # UDP: no packet is sent, only a route chosen
        except OSError as exc:
            raise HostsFileError(f"no route from this machine to {host.name} at {host.address}: {exc}") from exc
        return probe.getsockname()[0]
