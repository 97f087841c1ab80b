"""The prefill plan of a generation bundle chosen with its decode plan (planner/generation.py),
against its slow twin: every candidate priced on its own, the least request time wins."""
from __future__ import annotations

import pytest

from galaxy.compiler.capture.decode import LanguageModel
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.errors import GenerationError, InfeasiblePlanError
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.algorithms import choose_algorithms
from galaxy.compiler.planner.choose import MIN_GAIN
from galaxy.compiler.planner.decode import plan_generation
from galaxy.compiler.planner.generation import HEAD_SPLITS, plan_for_generation, request_s
from planner_fixtures import make_cluster
from summaries import llama_1b_summary

MODEL = LanguageModel(vocab_size=128256, eos_token_id=None, max_positions=131072)
PREFILL, DECODE = llama_1b_summary(256), llama_1b_summary(1)
ROOMY = [("fast", 12, 80), ("mid", 12, 40), ("slow", 12, 40)]


def _every_candidate(cluster, max_len: int) -> dict[str, float]:
    """Request seconds of the ILP's prefill and of each head split, each with its own decode plan."""
    ilp = make_plan(PREFILL, cluster, cache_tokens=max_len)
    times = {"ilp": request_s(plan_generation(ilp, PREFILL, DECODE, cluster, max_len, MODEL))}
    table = build_cost_table(PREFILL, cluster, "float32", cache_tokens=max_len)
    for name, make in HEAD_SPLITS.items():
        try:
            plan = choose_algorithms(make(table, "latency"), table)
            times[name] = request_s(plan_generation(plan, PREFILL, DECODE, cluster, max_len, MODEL))
        except (InfeasiblePlanError, GenerationError):
            pass
    return times


@pytest.mark.parametrize("min_gain", [0.0, MIN_GAIN])
@pytest.mark.parametrize("mbit,latency_s,max_len", [(100, 5e-3, 264), (100, 5e-3, 512), (1000, 5e-4, 512),
                                                    (10_000, 1e-5, 264)])
def test_a_head_split_replaces_the_ilp_plan_only_when_a_request_is_min_gain_faster(mbit, latency_s, max_len,
                                                                                    min_gain):
    cluster = make_cluster(ROOMY, mbit_per_s=mbit, latency_s=latency_s)
    ilp = make_plan(PREFILL, cluster, cache_tokens=max_len)
    plan, generation = plan_for_generation(ilp, PREFILL, DECODE, cluster, max_len, MODEL, min_gain=min_gain)
    times = _every_candidate(cluster, max_len)
    split = min((t, name) for name, t in times.items() if name != "ilp")
    winner = split[1] if split[0] < (1 - min_gain) * times["ilp"] else "ilp"
    assert (plan is ilp) == (winner == "ilp") and request_s(generation) == pytest.approx(times[winner])
    assert generation.notes[0].startswith(f"prefill: the {ilp.solver if winner == 'ilp' else winner}")


def test_a_gain_within_the_cost_models_error_keeps_the_ilp_plan():
    """A 2% faster request at twice the time to first token is not worth the ILP's plan."""
    cluster = make_cluster(ROOMY, mbit_per_s=100, latency_s=5e-3)
    ilp = make_plan(PREFILL, cluster, cache_tokens=512)
    times = _every_candidate(cluster, 512)
    assert 1 - MIN_GAIN < min(t for n, t in times.items() if n != "ilp") / times["ilp"] < 1
    assert plan_for_generation(ilp, PREFILL, DECODE, cluster, 512, MODEL)[0] is ilp
    assert plan_for_generation(ilp, PREFILL, DECODE, cluster, 512, MODEL, min_gain=0.0)[0] is not ilp


def test_a_long_request_takes_a_head_split_its_decode_can_keep():
    """Slow links and 256 new tokens: the ILP's prefill leaves decode on one device, while a head
    split over every device decodes tensor-parallel, which pays back its slower prefill."""
    cluster = make_cluster(ROOMY, mbit_per_s=1000, latency_s=5e-4)
    ilp = make_plan(PREFILL, cluster, cache_tokens=512)
    kept = plan_generation(ilp, PREFILL, DECODE, cluster, 512, MODEL)
    plan, generation = plan_for_generation(ilp, PREFILL, DECODE, cluster, 512, MODEL)
    assert plan is not ilp and generation.layout == "keep" and len(generation.decode_ranks) == 3
    assert generation.predicted_tbt_s < kept.predicted_tbt_s and request_s(generation) < request_s(kept)
    assert "rather than the ILP's plan" in generation.notes[0]


def test_a_cluster_no_head_split_fits_keeps_the_ilp_plan():
    tight = make_cluster([("fast", 3, 80), ("mid", 3, 40), ("slow", 3, 40)], mbit_per_s=100, latency_s=5e-3)
    ilp = make_plan(PREFILL, tight, cache_tokens=264)
    plan, generation = plan_for_generation(ilp, PREFILL, DECODE, tight, 264, MODEL)
    assert plan is ilp and generation.notes[0].startswith(f"prefill: the {ilp.solver} plan")
