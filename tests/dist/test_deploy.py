"""galaxy-deploy and galaxy-serve --hosts for real: sshd runs inside each emulated device's network
namespace with a throw-away key; ssh, galaxy-deploy, galaxy-serve and the client run in the
emulator's control namespace on the same bridge, as on a user's laptop. Also galaxy-serve
--emulate, and that a SIGTERM leaves no namespace, cgroup, filler or rank behind. Root only.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from galaxy.host.deploy import device_files
from galaxy.serve import Client
from helpers import pipeline_plan
from serve_helpers import TOKEN, ServeProcess, TinyModel, alive

pytestmark = [pytest.mark.dist, pytest.mark.timeout(300)]

SSHD = "/usr/sbin/sshd"


def _require_root_and_sshd():
    if os.geteuid() != 0:
        pytest.skip("deploy over ssh into emulated devices needs root (network namespaces, sshd)")
    if not Path(SSHD).is_file() or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        pytest.skip(f"{SSHD} or the OpenSSH client is missing (scripts/setup.sh installs openssh-server as root)")


@pytest.fixture(scope="module")
def tiny():
    return TinyModel.bert()


@pytest.fixture(scope="module")
def pipeline_bundle(tiny, tmp_path_factory):
    return tiny.bundle(tmp_path_factory.mktemp("deploy") / "pipeline", pipeline_plan(tiny.summary, [(1, [1]), (1, [1])]))


@pytest.fixture
def devices(tmp_path):
    """Two emulated devices, each running sshd on port 22; yields (emulator, hosts file)."""
    _require_root_and_sshd()
    from galaxy.host.emulate import EmulatedCluster, EmulationUnavailable

    keys = tmp_path / "keys"
    keys.mkdir()
    for name in ("client", "host"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "client.pub", keys / "authorized_keys")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    emulator = EmulatedCluster([None, None], names=["dev0", "dev1"], control=True)
    try:
        emulator.start()
    except EmulationUnavailable as exc:
        pytest.skip(f"cannot emulate devices here: {exc}")
    daemons = []
    try:
        for rank in range(2):
            config = tmp_path / f"sshd_{rank}.conf"
            config.write_text("\n".join([
                "Port 22", f"ListenAddress {emulator.address(rank)}", f"HostKey {keys / 'host'}",
                f"AuthorizedKeysFile {keys / 'authorized_keys'}", "PidFile none", "StrictModes no", "UsePAM no",
                "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "Subsystem sftp internal-sftp", "LogLevel ERROR"]) + "\n")
            daemons.append(subprocess.Popen(emulator.wrap_command(rank, [SSHD, "-D", "-e", "-f", str(config)]),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        (tmp_path / "token").write_text(TOKEN + "\n")
        hosts = tmp_path / "hosts.toml"
        hosts.write_text('token_file = "token"\nknown_hosts = "known_hosts"\n' + "".join(
            f'[devices.dev{rank}]\naddress = "{emulator.address(rank)}"\nuser = "root"\nkey = "keys/client"\n'
            f'dir = "{tmp_path / f"device{rank}"}"\npython = "{sys.executable}"\n'
            f'env = {{ GLOO_SOCKET_IFNAME = "gxnet" }}\n' for rank in range(2)))
        _wait_for_sshd(emulator, daemons)
        yield emulator, hosts
    finally:
        for daemon in daemons:
            daemon.kill()
            daemon.wait(timeout=10)
        emulator.close()


def _wait_for_sshd(emulator, daemons) -> None:
    import socket

    from galaxy.host.netns import in_namespace

    deadline = time.monotonic() + 20
    for rank, daemon in enumerate(daemons):
        while True:
            try:
                in_namespace(emulator.control_namespace,
                             lambda: socket.create_connection((emulator.address(rank), 22), timeout=1).close())
                break
            except OSError:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd in device {rank} did not start: {daemon.stderr.read() if daemon.poll() else ''}")
                time.sleep(0.1)


def _in_control(emulator, *argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", emulator.control_namespace, sys.executable, *argv],
                          capture_output=True, text=True, timeout=timeout_s)


def _namespace_processes(emulator, rank: int) -> list[str]:
    pids = subprocess.run(["ip", "netns", "pids", emulator.namespace(rank)], capture_output=True, text=True).stdout.split()
    return [Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ") for pid in pids
            if Path(f"/proc/{pid}/cmdline").exists()]


def test_deploy_over_ssh_then_serve_through_the_devices(devices, pipeline_bundle, tiny, tmp_path):
    emulator, hosts = devices
    deployed = _in_control(emulator, "-m", "galaxy.host.deploy", str(pipeline_bundle), "--hosts", str(hosts))
    assert deployed.returncode == 0, deployed.stderr
    for rank in range(2):  # each device got only its own files, in a folder of its own
        folder = next((tmp_path / f"device{rank}").iterdir())
        copied = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert copied == sorted(device_files(pipeline_bundle, rank))
        assert not (folder / f"rank_{1 - rank}.py").exists()

    shard = next((tmp_path / "device1").iterdir()) / "weights/rank_1.safetensors"
    shard.write_bytes(shard.read_bytes()[:-8] + b"tampered")
    checked = _in_control(emulator, "-m", "galaxy.host.deploy", str(pipeline_bundle), "--hosts", str(hosts), "--check")
    assert checked.returncode == 2 and "dev1" in checked.stderr and "weights/rank_1.safetensors" in checked.stderr
    assert _in_control(emulator, "-m", "galaxy.host.deploy", str(pipeline_bundle), "--hosts", str(hosts)).returncode == 0

    prefix = ("ip", "netns", "exec", emulator.control_namespace)
    with ServeProcess(pipeline_bundle, "--hosts", str(hosts), command_prefix=prefix) as running:
        assert running.control.startswith(emulator.control_address)  # found as the route to the devices
        requests = tiny.requests(4)
        from galaxy.host.netns import in_namespace

        def ask():
            with Client(running.url) as client:
                return [client.infer(inputs) for inputs in requests], client.health()
        answers, health = in_namespace(emulator.control_namespace, ask, timeout_s=120)
        for inputs, outputs in zip(requests, answers):
            tiny.check(inputs, outputs)
        assert health["status"] == "ok"
        assert any("rank_1.py" in line for line in _namespace_processes(emulator, 1))
        assert running.stop(signal.SIGTERM) == 0
    deadline = time.monotonic() + 10  # the remote ranks exit as they lose the coordinator
    while any("rank_" in line for rank in range(2) for line in _namespace_processes(emulator, rank)):
        assert time.monotonic() < deadline, [_namespace_processes(emulator, rank) for rank in range(2)]
        time.sleep(0.2)


def test_serve_emulated_then_sigterm_leaves_nothing(pipeline_bundle, tiny, tmp_path):
    _require_root_and_sshd()
    cluster = tmp_path / "cluster.json"
    cluster.write_text(json.dumps({"devices": [{"name": "dev0", "cpu_share": 0.5}, {"name": "dev1", "cpu_share": 0.5}],
                                   "default_link": {"bandwidth_bytes_per_s": 125e6, "latency_s": 0.0}}))
    before = _emulator_leftovers()
    with ServeProcess(pipeline_bundle, "--emulate", extra=("--cluster-json", str(cluster))) as running:
        with Client(running.url) as client:
            for inputs in tiny.requests(3):
                tiny.check(inputs, client.infer(inputs))
        children = running.rank_pids()
        assert _emulator_leftovers() != before  # namespaces, cgroups and fillers exist while serving
        assert running.stop(signal.SIGTERM) == 0
    assert alive(children) == []
    assert _emulator_leftovers() == before


def _emulator_leftovers() -> tuple:
    namespaces = sorted(line.split()[0] for line in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                                   text=True).stdout.splitlines() if line.startswith("gx"))
    fillers = subprocess.run(["pgrep", "-f", "while :; do :; done"], capture_output=True, text=True).stdout.split()
    from galaxy.host.emulate import detect_cpu_cgroups

    cgroups = sorted(p.name for p in detect_cpu_cgroups().root.iterdir() if p.name.startswith("gx"))
    return namespaces, sorted(fillers), cgroups
