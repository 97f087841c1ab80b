"""The timeline picture: its segments follow the predicted block times; --png writes a PNG."""
from __future__ import annotations

import pytest
from report_fixtures import golden, pipeline

from galaxy.compiler.cost.latency import block_s
from galaxy.compiler.report.timeline import timeline_segments, write_timeline_png


def test_spans_follow_block_times_and_end_at_one_layer_per_stage():
    plan = golden().plan
    segments, spans = timeline_segments(plan)
    assert [s.block for s in spans] == ["prologue", "attention", "connective", "mlp", "handoff", "epilogue"]
    assert spans[-1].end_s == pytest.approx(sum(block_s(b) for b in plan.predicted_blocks))
    assert [s.runs for s in spans] == [1, 12, 12, 12, 1, 1]
    for before, after in zip(spans, spans[1:]):
        assert after.start_s == before.end_s


def test_link_time_follows_compute_and_its_hidden_part_overlaps_it():
    plan = golden().plan
    attention = next(b for b in plan.predicted_blocks if b.block == "attention")
    segments, spans = timeline_segments(plan)
    start = next(s.start_s for s in spans if s.block == "attention")
    mine = [s for s in segments if s.block == "attention" and s.rank == 1]
    parts = {s.part: s for s in mine}
    assert set(parts) == {"compute", "comm_cpu", "hidden", "link"}
    slowest = max(attention.compute_s_per_rank)
    assert parts["link"].start_s == pytest.approx(start + slowest)
    assert parts["link"].duration_s == pytest.approx(attention.comm_s - attention.hidden_s)
    assert parts["hidden"].start_s + parts["hidden"].duration_s == pytest.approx(start + slowest)
    assert parts["comm_cpu"].duration_s == pytest.approx(attention.comm_cpu_s_per_rank[1])
    assert parts["compute"].duration_s + parts["comm_cpu"].duration_s == pytest.approx(
        attention.compute_s_per_rank[1])


def test_transfers_come_first_and_only_busy_ranks_are_drawn():
    segments, spans = timeline_segments(pipeline().plan)
    transfer = [s for s in segments if s.block == "transfer"]
    assert {s.rank for s in transfer} == {2, 3}
    link = next(s for s in transfer if s.part == "link")
    compute = next(s for s in transfer if s.part == "comm_cpu")
    assert link.start_s < compute.start_s
    assert {s.rank for s in segments if s.block == "epilogue"} == {0}
    assert not [s for s in segments if s.rank in (0, 1) and s.block in ("attention", "mlp")
                and s.start_s >= next(sp.start_s for sp in spans if sp.block == "transfer")]


@pytest.mark.parametrize("doc", [golden, pipeline, lambda: golden("llama-base__home-3")])
def test_png_is_written(tmp_path, doc):
    pytest.importorskip("matplotlib")
    out = write_timeline_png(doc().plan, tmp_path / "t.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
