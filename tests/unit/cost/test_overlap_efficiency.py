"""A device's overlap efficiency scales what its GEMMs can hide; the planner follows."""
from __future__ import annotations


import pytest

from galaxy.compiler.cost import build_cost_table, predict
from galaxy.compiler.errors import ClusterFileError
from galaxy.compiler.ir.cluster import Cluster, Device, Link
from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.planner import make_plan
from summaries import bert_base_summary


def _two(eta: float) -> Cluster:
    """Two devices whose GEMMs are as fast in tiles as whole (a flat rows curve), so only the
    overlap efficiency decides whether tiles pay."""
    devices = tuple(Device(n, 8 * 2**30, f, overlap_efficiency=eta, gemm_rows_speed=((1, 1.0),))
                    for n, f in (("a", 80e9), ("b", 40e9)))
    return Cluster("two", devices, Link(62.5e6, 2e-4))


def test_no_efficiency_hides_nothing_and_halves_hide_less():
    summary = bert_base_summary()
    plan = make_plan(summary, _two(1.0), tile_choices=(4,))
    hidden = {}
    for eta in (1.0, 0.5, 0.0):
        _, blocks = predict(plan, build_cost_table(summary, _two(eta)))
        hidden[eta] = sum(b.hidden_s for b in blocks)
    assert hidden[0.0] == 0.0
    assert hidden[1.0] > hidden[0.5] > 0.0


def test_planner_stops_tiling_when_nothing_hides():
    plan = make_plan(bert_base_summary(), _two(0.0))
    assert all(stage.schedule.tiles == 0 for stage in plan.stages)


def test_cluster_file_reads_it_and_rejects_values_above_one(tmp_path):
    text = ('format_version = 1\nname = "x"\n[[devices]]\nname = "a"\nmemory = "1 GiB"\ngflops = 10.0\n'
            'overlap_efficiency = {}\n[links]\nbandwidth = "1 Gbit/s"\nlatency = "1 ms"\n')
    (tmp_path / "ok.toml").write_text(text.format(0.25))
    assert load_cluster(tmp_path / "ok.toml").devices[0].overlap_efficiency == 0.25
    (tmp_path / "bad.toml").write_text(text.format(1.5))
    with pytest.raises(ClusterFileError, match=r"devices\[0\]\.overlap_efficiency"):
        load_cluster(tmp_path / "bad.toml")
