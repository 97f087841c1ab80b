"""The decode plan of a generation bundle (planner/decode.py): which layout wins where, the cache
it moves, the memory it counts, and the errors when the context does not fit."""
from __future__ import annotations

import pytest

from galaxy.compiler.capture.decode import LanguageModel
from galaxy.compiler.cost.decode import cache_moves, generation_memory, group_range
from galaxy.compiler.cost.memory import cache_bytes_per_group
from galaxy.compiler.cost.table import build_cost_table
from galaxy.compiler.errors import GenerationError
from galaxy.compiler.ir.generation import Generation
from galaxy.compiler.planner import make_plan
from galaxy.compiler.planner.decode import plan_generation
from planner_fixtures import make_cluster
from summaries import llama_1b_summary

PROMPT, MAX_LEN = 256, 512
MODEL = LanguageModel(vocab_size=128256, eos_token_id=None, max_positions=131072)
PREFILL, DECODE = llama_1b_summary(PROMPT), llama_1b_summary(1)
THREE = [("fast", 12, 80), ("mid", 12, 40), ("slow", 12, 40)]


def _generation(specs, mbit: float, latency_s: float, solver: str = "even", layout=None,
                max_len: int = MAX_LEN) -> Generation:
    cluster = make_cluster(specs, mbit_per_s=mbit, latency_s=latency_s)
    prefill = make_plan(PREFILL, cluster, solver=solver, cache_tokens=max_len)
    return plan_generation(prefill, PREFILL, DECODE, cluster, max_len, MODEL, layout)


def test_slow_links_decode_on_the_fastest_device_alone_and_say_why():
    g = _generation(THREE, mbit=100, latency_s=5e-3)
    assert g.layout == "single" and g.decode_ranks == (0,)
    assert g.handoff_s > 0 and g.cache_moves  # the prompt's cache comes from every rank of the prefill
    assert any(n.startswith("why one device") for n in g.notes)
    assert {c.layout for c in g.candidates} >= {"single", "keep"}  # a pipeline collapses to one device here


def test_fast_links_keep_the_heads_split_and_the_cache_stays():
    g = _generation(THREE, mbit=10_000, latency_s=1e-5)
    assert g.layout == "keep" and not g.cache_moves and g.handoff_s == 0
    assert str(g.decode.stages[0].schedule).startswith("BCAST | attn:AR")
    single = next(c for c in g.candidates if c.layout == "single")
    assert g.predicted_tbt_s < single.s_per_token
    assert any(n.startswith("why tensor parallelism") for n in g.notes)


def test_a_model_too_big_for_one_device_never_decodes_on_one():
    small = [("fast", 4, 80), ("mid", 3, 40), ("slow", 3, 40)]  # 4.9 GB of weights: no device holds them
    g = _generation(small, mbit=100, latency_s=5e-3)
    assert g.layout in ("keep", "pipeline")
    single = next(c for c in g.candidates if c.layout == "single")
    assert not single.fits and "lacks" in single.why_not
    assert any("do not fit" in n for n in g.notes)


def test_a_forced_layout_says_what_the_planner_would_choose():
    g = _generation(THREE, mbit=100, latency_s=5e-3, layout="keep")
    assert g.layout == "keep"
    assert any("asked for (--decode keep); the planner would choose single" in n for n in g.notes)


def test_time_to_first_token_adds_the_cache_hand_off():
    g = _generation(THREE, mbit=100, latency_s=5e-3)
    keep = _generation(THREE, mbit=100, latency_s=5e-3, layout="keep")
    assert g.predicted_ttft_s == pytest.approx(keep.predicted_ttft_s + g.handoff_s)


def test_every_cached_group_comes_from_a_rank_that_computed_it():
    """cache_moves against its slow twin: each (layer, receiver, KV group) exactly once, sent by a
    rank whose prefill share holds that group."""
    cluster = make_cluster(THREE, mbit_per_s=100, latency_s=5e-3)
    prefill = make_plan(PREFILL, cluster, solver="even", cache_tokens=MAX_LEN)
    for layout in ("single", "pipeline"):
        g = plan_generation(prefill, PREFILL, DECODE, cluster, MAX_LEN, MODEL, layout)
        got = {}
        for layer, sender, receiver, sender_first, receiver_first, groups in g.cache_moves:
            source = next(s for s in prefill.stages if layer in s.layers)
            held = group_range(source, source.ranks.index(sender), PREFILL.kv_heads)
            for k in range(groups):
                assert held.start + sender_first + k in held
                key = (layer, receiver, receiver_first + k)
                assert key not in got
                got[key] = held.start + sender_first + k
        wanted = {(layer, r, j): j for s in g.decode.stages for layer in s.layers for i, r in enumerate(s.ranks)
                  for j in range(len(group_range(s, i, PREFILL.kv_heads)))}
        assert got == wanted, layout


def test_the_cache_is_counted_in_each_devices_memory():
    cluster = make_cluster(THREE, mbit_per_s=10_000, latency_s=1e-5)
    prefill = make_plan(PREFILL, cluster, solver="even", cache_tokens=MAX_LEN)
    g = plan_generation(prefill, PREFILL, DECODE, cluster, MAX_LEN, MODEL, "keep")
    memory = generation_memory(prefill, g.decode, build_cost_table(PREFILL, cluster), PREFILL, DECODE, MAX_LEN,
                               keep=True)
    for rank, name in enumerate(prefill.devices):
        groups = prefill.stages[0].kv_heads_per_rank[rank]
        expected = PREFILL.n_layers * groups * cache_bytes_per_group(PREFILL, MAX_LEN)
        assert memory[name].decode_cache == expected == g.cache_bytes[rank]
        assert memory[name].prefill_cache == 0 and memory[name].decode_weights == 0  # keep: nothing moves


@pytest.mark.parametrize("max_len,message", [
    (PROMPT, "leaves no room to generate"),
    (200_000, "beyond the model's 131072 positions"),
])
def test_max_len_errors_name_the_limit(max_len, message):
    with pytest.raises(GenerationError, match=message):
        _generation(THREE, mbit=1000, latency_s=5e-4, max_len=max_len)


def test_a_context_that_fits_nowhere_is_a_clear_error():
    cluster = make_cluster([("fast", 4, 80), ("mid", 3, 40), ("slow", 3, 40)], mbit_per_s=1000, latency_s=5e-4)
    prefill = make_plan(PREFILL, cluster, solver="even")  # planned without the cache: it fits, the cache does not
    with pytest.raises(GenerationError, match="no decode layout fits a key/value cache of 131072 tokens.*smaller --max-len"):
        plan_generation(prefill, PREFILL, DECODE, cluster, 131072, MODEL)


def test_the_generation_record_round_trips():
    g = _generation(THREE, mbit=100, latency_s=5e-3)
    assert Generation.from_json(g.to_json()) == g
