"""galaxy-profile end to end: real gloo processes over loopback, every run bounded in time."""
from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
from datetime import datetime

import pytest

from galaxy.compiler.ir.cluster_file import PROFILE_KEYS, load_cluster
from galaxy.compiler.profile import link

pytestmark = pytest.mark.dist

TINY = ["--quick", "--threads", "1", "--seq-len", "16", "--hidden", "32", "--heads", "4", "--intermediate", "64"]


def run_cli(args: list[str], timeout_s: float = 90.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "galaxy.compiler.profile.cli", *args], capture_output=True,
                          text=True, timeout=timeout_s)


def positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


@pytest.mark.timeout(120)
def test_quick_profile_format_and_cluster_file(tmp_path):
    done = run_cli([*TINY, "-o", str(tmp_path / "dev.json")])
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "dev.json").read_text())
    assert set(doc) == PROFILE_KEYS and doc["format_version"] == 1 and doc["threads"] == 1
    for key in ("flops_per_s", "attention_flops_per_s", "elementwise_bytes_per_s", "comm_cpu_s_per_byte"):
        assert positive(doc[key]), (key, doc[key])
    assert sorted(doc["gemm_flops_per_s"]) == sorted(["16x32x96", "16x32x32", "16x32x64", "16x64x32"])
    assert all(positive(v) for v in doc["gemm_flops_per_s"].values())
    assert datetime.fromisoformat(doc["measured_at"]).tzinfo is not None
    assert doc["shapes"]["hidden"] == 32 and doc["method"]["repeats"] == 3
    assert "layer -> flops_per_s" in done.stdout and "INFO" in done.stderr  # table out, progress err

    (tmp_path / "c.toml").write_text(
        'format_version = 1\nname = "p"\n[[devices]]\nname = "me"\nmemory = "1 GiB"\nprofile = "dev.json"\n'
        '[links]\nbandwidth = "1 Gbit/s"\nlatency = "1 ms"\n')
    me = load_cluster(tmp_path / "c.toml").device("me")
    assert (me.flops_per_s, me.comm_cpu_s_per_byte, me.attention_flops_per_s) == (
        doc["flops_per_s"], doc["comm_cpu_s_per_byte"], doc["attention_flops_per_s"])


@pytest.mark.timeout(120)
def test_link_local_self_check():
    start = time.monotonic()
    result = link.run_local_pair(link.QUICK, timeout_s=30.0)
    assert time.monotonic() - start < 90.0
    assert positive(result.alpha_s) and positive(result.beta_s_per_byte)
    assert positive(result.bandwidth_bytes_per_s) and result.alpha_s < 1.0
    assert all(positive(c) for c in result.comm_cpu_s_per_byte)
    assert len(result.half_rtt_s) == len(link.QUICK.sizes_bytes)


@pytest.mark.timeout(120)
def test_link_local_cli_writes_json(tmp_path):
    done = run_cli(["--link-local", "--quick", "-o", str(tmp_path / "link.json")])
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "link.json").read_text())
    assert data["format_version"] == 1
    assert all(positive(data[k]) for k in ("alpha_s", "beta_s_per_byte", "bandwidth_bytes_per_s"))
    assert "[links]" in done.stdout and "[[links.override]]" in done.stdout


@pytest.mark.timeout(60)
def test_link_rank_without_peer_times_out_naming_the_master():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = time.monotonic()
    done = run_cli(["--link", f"127.0.0.1:{port}", "--rank", "1", "--timeout", "2"], timeout_s=45.0)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("galaxy-profile: error:") and f"127.0.0.1:{port}" in last, last
    assert time.monotonic() - start < 40.0
