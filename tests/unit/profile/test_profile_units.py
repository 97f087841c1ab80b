"""galaxy-profile without gloo: shapes, the profile document, its reader, the cost table's use of it."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from galaxy.compiler.cost.flops import layer_flops
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.ir.cluster import Cluster, Device, Link
from galaxy.compiler.ir.cluster_file import PROFILE_KEYS, load_cluster
from galaxy.compiler.ir.summary import ModelSummary
from galaxy.compiler.profile import cli, device, link, report

TINY = device.Shapes(source="tiny", seq_len=16, hidden=32, heads=4, kv_heads=4, head_dim=8, intermediate=64)
RATE_KEYS = ("flops_per_s", "gemm_flops_per_s", "attention_flops_per_s", "elementwise_bytes_per_s",
             "comm_cpu_s_per_byte", "threads")
FAKE_LINK = link.LinkResult(link.QUICK, alpha_s=5e-5, beta_s_per_byte=3e-10, half_rtt_s=(4e-4, 7e-4),
                            comm_cpu_s_per_byte=(4e-10, 6e-10), hosts=("a", "b"), alpha_spread_s=(4e-5, 9e-5))

CLUSTER = """\
format_version = 1
name = "profiled"

[[devices]]
name = "here"
memory = "4 GiB"
profile = "{profile}"

[[devices]]
name = "other"
memory = "4 GiB"
gflops = 10

[links]
bandwidth = "1 Gbit/s"
latency = "0.5 ms"
"""


@pytest.fixture(scope="module")
def tiny_rates() -> device.DeviceRates:
    return device.measure_device(TINY, device.QUICK)


def summary(seq_len=64, heads=4, kv_heads=4, gated=False) -> ModelSummary:
    return ModelSummary(name="toy", batch=1, seq_len=seq_len, hidden=64, n_layers=2, heads=heads,
                        kv_heads=kv_heads, head_dim=16, intermediate=256, gated_mlp=gated,
                        attention_bias=True, mlp_bias=True, dtype_bytes=4, prologue_param_bytes=0,
                        prologue_flops=1.0, epilogue_param_bytes=0, epilogue_flops=1.0,
                        connective_param_bytes_per_layer=0)


def test_default_shapes_are_bert_base():
    keys = [g.key for g in device.Shapes().gemms()]
    assert keys == ["256x768x2304", "256x768x768", "256x768x3072", "256x3072x768"]
    assert device.Shapes().attention_key == "1x12x256x64"


def test_gqa_and_gated_shapes():
    shapes = device.Shapes(hidden=96, heads=6, kv_heads=3, head_dim=16, intermediate=256, gated_mlp=True,
                           seq_len=32)
    qkv, out, up, down = shapes.gemms()
    assert (qkv.out, out.inner, up.count, down.inner) == ((6 + 2 * 3) * 16, 96, 2, 256)


def test_same_shape_measured_once_counted_twice():
    merged = device._unique((device.Gemm("a", 8, 16, 16), device.Gemm("b", 8, 16, 16), device.Gemm("c", 8, 16, 4)))
    assert [(g.key, g.count) for g in merged] == [("8x16x16", 2), ("8x16x4", 1)]


def test_profile_document(tiny_rates):
    doc = report.device_profile(tiny_rates, FAKE_LINK)
    assert set(doc) == PROFILE_KEYS  # everything written is accepted by the cluster reader
    assert doc["format_version"] == 1
    assert report.problems(doc, RATE_KEYS) == []
    assert set(doc["gemm_flops_per_s"]) == {"16x32x96", "16x32x32", "16x32x64", "16x64x32"}
    assert doc["comm_cpu_s_per_byte"] == pytest.approx(5e-10)
    layer = sum(g.work * g.count for g in tiny_rates.gemms) / sum(g.timing.median_s * g.count
                                                                  for g in tiny_rates.gemms)
    assert doc["flops_per_s"] == pytest.approx(layer)
    assert min(doc["gemm_flops_per_s"].values()) <= doc["flops_per_s"] <= max(doc["gemm_flops_per_s"].values())
    json.dumps(doc, allow_nan=False)
    table = report.profile_table(tiny_rates, FAKE_LINK, doc)
    assert "layer -> flops_per_s" in table and "median of 3 timed repeats after 1 warmup" in table


def test_problems_flags_bad_numbers():
    doc = {"a": 1.0, "b": 0.0, "c": float("nan"), "d": {"x": 2.0, "y": -1.0}, "e": True}
    assert report.problems(doc, ("a", "b", "c", "d", "e", "missing")) == ["b", "c", "d[y]", "e", "missing"]


def test_cluster_reads_written_profile(tmp_path, tiny_rates):
    doc = report.device_profile(tiny_rates, FAKE_LINK)
    report.write_json(tmp_path / "profiles" / "here.json", doc)
    (tmp_path / "c.toml").write_text(CLUSTER.format(profile="profiles/here.json"))
    here = load_cluster(tmp_path / "c.toml").device("here")
    assert here.flops_per_s == doc["flops_per_s"]
    assert here.comm_cpu_s_per_byte == doc["comm_cpu_s_per_byte"]
    assert here.attention_flops_per_s == doc["attention_flops_per_s"]
    assert here.profile == "profiles/here.json"


def test_printed_device_snippet_loads(tmp_path, tiny_rates):
    doc = report.device_profile(tiny_rates, FAKE_LINK)
    report.write_json(tmp_path / "p.json", doc)
    toml = "format_version = 1\nname = \"x\"\n" + report.device_toml(doc, "p.json") \
        + "\n[links]\nbandwidth = \"1 Gbit/s\"\nlatency = \"1 ms\"\n"
    (tmp_path / "c.toml").write_text(toml)
    assert load_cluster(tmp_path / "c.toml").devices[0].flops_per_s == doc["flops_per_s"]


def test_printed_link_snippet_loads(tmp_path):
    result = replace(FAKE_LINK, hosts=("here", "other"))
    (tmp_path / "p.json").write_text(json.dumps({"format_version": 1, "flops_per_s": 1e9}))
    snippet = report.link_toml(result)
    (tmp_path / "c.toml").write_text(CLUSTER.format(profile="p.json").split("[links]")[0] + snippet + "\n")
    cluster = load_cluster(tmp_path / "c.toml")
    assert cluster.link("here", "other").latency_s == pytest.approx(5e-5)
    assert cluster.link("here", "other").bandwidth_bytes_per_s == pytest.approx(1 / 3e-10, rel=1e-3)


def test_profile_without_attention_rate_keeps_zero(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"format_version": 1, "flops_per_s": 2e10}))
    (tmp_path / "c.toml").write_text(CLUSTER.format(profile="p.json"))
    assert load_cluster(tmp_path / "c.toml").device("here").attention_flops_per_s == 0.0


def test_bad_attention_rate_names_the_field(tmp_path):
    from galaxy.compiler.errors import ClusterFileError
    (tmp_path / "p.json").write_text(json.dumps({"format_version": 1, "flops_per_s": 2e10,
                                                 "attention_flops_per_s": -1}))
    (tmp_path / "c.toml").write_text(CLUSTER.format(profile="p.json"))
    with pytest.raises(ClusterFileError, match="attention_flops_per_s must be > 0") as info:
        load_cluster(tmp_path / "c.toml")
    assert info.value.field == "devices[0].profile"


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cost_table_uses_attention_rate(kv_heads):
    s = summary(kv_heads=kv_heads)
    plain = Device("plain", 2**30, 20e9)
    profiled = Device("profiled", 2**30, 20e9, attention_flops_per_s=5e9)
    table = build_cost_table(s, Cluster("c", (plain, profiled), Link(1e8, 1e-4)))
    fl = layer_flops(s)
    g = s.heads_per_kv_group
    assert table.attention_s_per_group[0] == pytest.approx(fl.attention_per_group / 20e9)  # unchanged
    sdpa = 4.0 * s.batch * s.seq_len ** 2 * s.head_dim * g
    expected = (fl.attention_in_per_group + fl.attention_out_per_group) / 20e9 + sdpa / 5e9
    assert table.attention_s_per_group[1] == pytest.approx(expected)
    assert table.attention_in_s_per_group[0] == table.attention_in_s_per_group[1]
    assert table.mlp_s_per_column[0] == table.mlp_s_per_column[1]


def test_device_json_round_trip():
    cluster = Cluster("c", (Device("a", 2**30, 1e10, attention_flops_per_s=3e9), Device("b", 2**30, 2e10)),
                      Link(1e8, 1e-4))
    assert Cluster.from_json(json.loads(json.dumps(cluster.to_json()))) == cluster
    old = cluster.to_json()
    for d in old["devices"]:
        del d["attention_flops_per_s"]  # a plan.json written before the field existed
    assert Cluster.from_json(old).devices[0].attention_flops_per_s == 0.0


def test_link_config_wire_round_trip():
    assert link.LinkConfig.from_tensor(link.FULL.to_tensor()) == link.FULL
    assert link.LinkConfig.from_tensor(link.QUICK.to_tensor()) == link.QUICK


def test_link_result_json_round_trip():
    data = json.loads(json.dumps(FAKE_LINK.to_json()))
    assert data["bandwidth_bytes_per_s"] == pytest.approx(1 / 3e-10)
    assert link.LinkResult.from_json(data) == FAKE_LINK


def test_fit_beta():
    sizes = (1 << 20, 1 << 21, 1 << 22)
    assert link.fit_beta(sizes, [1e-4 + 2e-9 * b for b in sizes], 1e-4) == pytest.approx(2e-9)
    noisy = link.fit_beta(sizes, [3e-3, 2e-3, 1e-3], 1e-4)  # shrinking times: fall back, stay positive
    assert noisy > 0 and math.isfinite(noisy)


@pytest.mark.parametrize("argv, words", [
    (["--size", "tiny"], "--size applies only with --model"),
    (["--hidden", "100", "--heads", "12"], "not a multiple"),
    (["--model", "m.py", "--hidden", "64"], "cannot be combined with --model"),
    (["--link", "127.0.0.1:1"], "--link needs --rank"),
    (["--link", "nohostport", "--rank", "0"], "expected HOST:PORT"),
    (["--link", "127.0.0.1:1", "--rank", "0", "--link-local"], "not both"),
])
def test_cli_errors_are_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("galaxy-profile: error:") and words in err[-1]
