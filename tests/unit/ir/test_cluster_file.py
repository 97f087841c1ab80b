"""Cluster TOML files: every example loads; every malformed case names its field."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from galaxy.compiler.errors import ClusterFileError
from galaxy.compiler.ir.cluster import DEFAULT_COMM_CPU_S_PER_BYTE, Cluster, Link
from galaxy.compiler.ir.cluster_file import default_cluster_path, load_cluster

CLUSTERS_DIR = Path(__file__).resolve().parents[3] / "clusters"
EXAMPLES = sorted(CLUSTERS_DIR.glob("*.toml"))
MEASURED_GFLOPS_PER_CORE = 80.0  # clusters/README.md

GOOD = """\
format_version = 1
name = "t"
description = "a test"

[[devices]]
name = "laptop"
memory = "8 GiB"
gflops = 60.0
cpu_share = 0.75
host = "192.168.1.20"
comm_cpu_ns_per_byte = 4

[[devices]]
name = "phone"
memory = "1.5 GB"
gflops = 10

[[devices]]
name = "tv"
memory = "512 MiB"
gflops = 5

[links]
bandwidth = "1 Gbit/s"
latency = "0.5 ms"

[[links.override]]
between = ["phone", "laptop"]
bandwidth = "100 Mbit/s"
latency = "2 ms"

[[links.override]]
between = ["tv", "laptop"]
latency = "3 ms"
"""


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_expected_example_files_exist():
    names = {p.name for p in EXAMPLES}
    assert {"home-3.toml", "two-uneven.toml", "four-uneven.toml", "llama-3-uneven.toml", "galaxy-paper.toml",
            "eight-devices.toml", "tiny-memory.toml"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_loads_and_round_trips(path):
    cluster = load_cluster(path)
    assert cluster.name == path.stem
    assert Cluster.from_json(json.loads(json.dumps(cluster.to_json()))) == cluster
    for dev in cluster.devices:  # rates match what the emulator gives on the development machine
        assert dev.flops_per_s == pytest.approx(dev.cpu_share * MEASURED_GFLOPS_PER_CORE * 1e9)
    assert sum(d.cpu_share for d in cluster.devices) <= 2.0 + 1e-9  # a 2-core machine
    assert str(cluster).startswith(f"cluster {cluster.name}")


def test_default_is_home_3():
    cluster = load_cluster(default_cluster_path())
    assert default_cluster_path().name == "home-3.toml"
    assert [d.cpu_share for d in cluster.devices] == [1.0, 0.5, 0.5]
    assert cluster.default_link == Link(bandwidth_bytes_per_s=1e9 / 8, latency_s=0.5e-3)


def test_reference_clusters():
    two = load_cluster(CLUSTERS_DIR / "two-uneven.toml")
    assert [d.cpu_share for d in two.devices] == [1.0, 0.5]
    four = load_cluster(CLUSTERS_DIR / "four-uneven.toml")
    assert [d.cpu_share for d in four.devices] == [0.8, 0.4, 0.4, 0.2]
    assert four.default_link.bandwidth_bytes_per_s == 500e6 / 8


def test_memory_of_planning_examples():
    llama_70b_fp32 = 70.55e9 * 4
    eight = load_cluster(CLUSTERS_DIR / "eight-devices.toml")
    assert sum(d.mem_bytes for d in eight.devices) > llama_70b_fp32
    assert max(d.mem_bytes for d in eight.devices) < llama_70b_fp32 / 2  # even fp16 needs a split
    bert_base_fp32 = 109.48e6 * 4
    tiny = load_cluster(CLUSTERS_DIR / "tiny-memory.toml")
    assert sum(d.mem_bytes for d in tiny.devices) < bert_base_fp32


def test_good_file_values(tmp_path):
    cluster = load_cluster(write(tmp_path, GOOD))
    laptop, phone, tv = cluster.devices
    assert cluster.names == ("laptop", "phone", "tv")
    assert laptop.mem_bytes == 8 * 2**30 and laptop.flops_per_s == 60e9 and laptop.cpu_share == 0.75
    assert laptop.host == "192.168.1.20" and laptop.comm_cpu_s_per_byte == pytest.approx(4e-9)
    assert phone.mem_bytes == 1_500_000_000 and phone.cpu_share == 1.0
    assert phone.comm_cpu_s_per_byte == DEFAULT_COMM_CPU_S_PER_BYTE
    assert tv.mem_bytes == 512 * 2**20
    assert cluster.link("phone", "laptop") == Link(100e6 / 8, 2e-3)
    assert cluster.link("laptop", "tv") == Link(1e9 / 8, 3e-3)  # bandwidth inherited from [links]
    assert cluster.link("phone", "tv") == cluster.default_link
    assert [o[:2] for o in cluster.link_overrides] == [("laptop", "phone"), ("laptop", "tv")]  # sorted


@pytest.mark.parametrize("text, unit_bytes_per_s", [
    ("800 bit/s", 100.0), ("8 kbit/s", 1e3), ("8 Mbit/s", 1e6), ("8 Gbit/s", 1e9),
    ("1 B/s", 1.0), ("1 KB/s", 1e3), ("1 MB/s", 1e6), ("1 GB/s", 1e9),
])
def test_bandwidth_units(tmp_path, text, unit_bytes_per_s):
    cluster = load_cluster(write(tmp_path, GOOD.replace('bandwidth = "1 Gbit/s"', f'bandwidth = "{text}"')))
    assert cluster.default_link.bandwidth_bytes_per_s == pytest.approx(unit_bytes_per_s)


def test_profile_file(tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "phone.json").write_text(json.dumps(
        {"format_version": 1, "flops_per_s": 2.5e10, "comm_cpu_s_per_byte": 7e-9}))
    text = GOOD.replace('name = "phone"\nmemory = "1.5 GB"\ngflops = 10',
                        'name = "phone"\nmemory = "1.5 GB"\nprofile = "profiles/phone.json"')
    phone = load_cluster(write(tmp_path, text)).device("phone")
    assert phone.flops_per_s == 2.5e10 and phone.comm_cpu_s_per_byte == 7e-9
    assert phone.profile == "profiles/phone.json"


def replace(old: str, new: str, count: int = 1) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, count)


MALFORMED = [
    # (text, field, words in the problem)
    (replace("format_version = 1", "format_version = 2"), "format_version", "reads format_version 1"),
    (replace('name = "t"\n', ""), "name", "missing"),
    (replace('memory = "512 MiB"', 'memory = "512 gigs"'), "devices[2].memory", "unit like '8 GiB'"),
    (replace('memory = "512 MiB"', "memory = 512"), "devices[2].memory", "unit like '8 GiB'"),
    (replace('memory = "512 MiB"', 'memory = "-1 GiB"'), "devices[2].memory", "negative"),
    (replace('memory = "512 MiB"', 'memory = "0 GiB"'), "devices[2].memory", "> 0"),
    (replace('memory = "512 MiB"\n', ""), "devices[2].memory", "missing"),
    (replace("gflops = 5", "gflop = 5"), "devices[2].gflop", "did you mean 'gflops'"),
    (replace("gflops = 5", "gflops = -5"), "devices[2].gflops", "must be > 0, got -5"),
    (replace("gflops = 5", "gflops = 0"), "devices[2].gflops", "> 0"),
    (replace("gflops = 5", 'gflops = "fast"'), "devices[2].gflops", "expected a number"),
    (replace("gflops = 5\n", ""), "devices[2].gflops", "exactly one of gflops"),
    (replace("gflops = 5", 'gflops = 5\nprofile = "p.json"'), "devices[2].gflops", "exactly one of gflops"),
    (replace("gflops = 5", 'profile = "nope.json"'), "devices[2].profile", "does not exist"),
    (replace("cpu_share = 0.75", "cpu_share = -0.5"), "devices[0].cpu_share", "must be > 0"),
    (replace("comm_cpu_ns_per_byte = 4", "comm_cpu_ns_per_byte = -4"), "devices[0].comm_cpu_ns_per_byte", ">= 0"),
    (replace('name = "tv"', 'name = "phone"'), "devices[2].name", "already the name of devices[1]"),
    (replace('name = "tv"', 'name = "my tv"'), "devices[2].name", "letters, digits"),
    (replace('name = "tv"', "name = 3"), "devices[2].name", "non-empty string"),
    (replace('bandwidth = "1 Gbit/s"', 'bandwidth = "1 Gbps"'), "links.bandwidth", "Mbit/s"),
    (replace('bandwidth = "1 Gbit/s"', 'bandwidth = "0 Gbit/s"'), "links.bandwidth", "> 0"),
    (replace('latency = "0.5 ms"', 'latency = "0.5 fortnights"'), "links.latency", "units: s, ms, us"),
    (replace('latency = "0.5 ms"', 'latency = "-1 ms"'), "links.latency", "negative"),
    (replace('latency = "0.5 ms"\n', ""), "links.latency", "missing"),
    (replace('[links]\nbandwidth = "1 Gbit/s"', '[links]\nspeed = "1 Gbit/s"\nbandwidth = "1 Gbit/s"'),
     "links.speed", "unknown key"),
    (replace('between = ["phone", "laptop"]', 'between = ["phone", "fridge"]'),
     "links.override[0].between", "'fridge' is not a device"),
    (replace('between = ["phone", "laptop"]', 'between = ["phone"]'), "links.override[0].between", "two device names"),
    (replace('between = ["phone", "laptop"]', 'between = ["phone", "phone"]'),
     "links.override[0].between", "two different devices"),
    (replace('between = ["tv", "laptop"]', 'between = ["laptop", "phone"]'),
     "links.override[1].between", "overridden twice"),
    (replace('between = ["tv", "laptop"]\nlatency = "3 ms"', 'between = ["tv", "laptop"]'),
     "links.override[1]", "bandwidth, latency or both"),
    (replace('latency = "2 ms"', 'latency = "2 ms"\njitter = "1 ms"'), "links.override[0].jitter", "unknown key"),
    (replace('description = "a test"', 'descripton = "a test"'), "descripton", "did you mean 'description'"),
    ('format_version = 1\nname = "t"\ndevices = []\n[links]\nbandwidth = "1 Gbit/s"\nlatency = "1 ms"\n',
     "devices", "at least one"),
    ('format_version = 1\nname = "t"\n[links]\nbandwidth = "1 Gbit/s"\nlatency = "1 ms"\n', "devices", "missing"),
    (GOOD.split("[links]")[0], "links", "missing"),
    ("format_version = 1\nname = [", "(file)", "not valid TOML"),
]


@pytest.mark.parametrize("text, field, problem", MALFORMED, ids=[f"{i}-{m[1]}" for i, m in enumerate(MALFORMED)])
def test_malformed_names_its_field(tmp_path, text, field, problem):
    path = write(tmp_path, text)
    with pytest.raises(ClusterFileError) as info:
        load_cluster(path)
    assert info.value.field == field, str(info.value)
    assert problem in str(info.value)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("profile, problem", [
    ("{not json", "not readable JSON"),
    ('{"format_version": 1}', "missing keys ['flops_per_s']"),
    ('{"format_version": 1, "flops_per_s": 1e9, "gpu": 1}', "unknown keys ['gpu']"),
    ('{"format_version": 9, "flops_per_s": 1e9}', "expected 1"),
    ('{"format_version": 1, "flops_per_s": -1}', "p.json: flops_per_s must be > 0"),
])
def test_malformed_profile(tmp_path, profile, problem):
    (tmp_path / "p.json").write_text(profile)
    path = write(tmp_path, replace("gflops = 5", 'profile = "p.json"'))
    with pytest.raises(ClusterFileError) as info:
        load_cluster(path)
    assert info.value.field == "devices[2].profile" and problem in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ClusterFileError, match="no such file"):
        load_cluster(tmp_path / "absent.toml")
