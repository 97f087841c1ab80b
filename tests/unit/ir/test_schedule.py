"""The schedule vocabulary: strings that round-trip, clear errors, and the layouts they imply."""
from __future__ import annotations

import json

import pytest

from galaxy.compiler.errors import PlanFileError
from galaxy.compiler.ir.plan import FORMAT_VERSION, Plan
from galaxy.compiler.ir.schedule import Action, StageSchedule, stage_schedule

EXAMPLES = [
    "SCATTER | attn:AG(t2)>RS(t2) mlp:AG>RS | GATHER",
    "REP | attn:AR mlp:AR | -",
    "SCATTER | attn:KVAG(t2,f16) mlp:- | GATHER",
    "REP | attn:- mlp:- | -",
    "SCATTER | attn:KVATT(f16,direct) mlp:- | GATHER",
    "SCATTER | par:KVATT | GATHER",
    "RECV | attn:AG(bf16,direct)>RS(t0,bf16,direct) mlp:AG(t4)>RS(t0) | SEND",
    "SCATTER | par:AG(t2)>RS(t2) | GATHER",
    "REP | par:AR | -",
]


@pytest.mark.parametrize("text", EXAMPLES)
def test_strings_round_trip(text):
    schedule = StageSchedule.parse(text)
    assert str(schedule) == text
    assert StageSchedule.parse(str(schedule)) == schedule


def test_an_action_carries_its_tiles_wire_dtype_and_algorithm():
    assert Action.parse("RS(t4,f16)") == Action("RS", 4, "float16", "ring")
    assert Action.parse("RS(t0,direct)") == Action("RS", 0, "float32", "direct")
    assert str(Action("AG", 1, "float32", "ring")) == "AG"


@pytest.mark.parametrize("text,message", [
    ("SCATTER | attn:AG>RS mlp:AG>RS", "expected 'ENTER | BLOCKS | EXIT'"),
    ("SCATTER | attn:XX mlp:- | GATHER", "unknown schedule action 'XX'"),
    ("SCATTER | attn:KVAG(t0) mlp:- | GATHER", "tiles must be >= 1"),
    ("SCATTER | attn:AG(t2,direct)>RS mlp:- | GATHER", "a direct collective sends whole chunks"),
    ("SCATTER | attn:AG(f8) mlp:- | GATHER", "unknown option 'f8'"),
    ("SCATTER | attn:RS>AG mlp:- | GATHER", "a block carries AG>RS, AR, KVAG, KVATT or nothing"),
    ("SCATTER | attn:KVATT(t2) mlp:- | GATHER", "not in tiles"),
    ("SCATTER | attn:- mlp:KVATT | GATHER", "KVATT moves keys and values, so only attention has it"),
    ("SCATTER | mlp:- attn:- | GATHER", "lists attn and mlp, in that order"),
    ("SCATTER | attn:- mlp:KVAG | GATHER", "only attention has it"),
    ("SCATTER | attn:AG>RS par:AG>RS | GATHER", "or par alone"),
    ("GATHER | attn:- mlp:- | -", "enters with SCATTER, REP, BCAST, RECV"),
])
def test_bad_strings_say_what_is_expected(text, message):
    with pytest.raises(PlanFileError, match=message):
        StageSchedule.parse(text)


def test_the_layouts_a_schedule_implies():
    hybrid, megatron, sequence, alone = (StageSchedule.parse(t) for t in EXAMPLES[:4])
    assert (hybrid.layout, hybrid.shards_weights, hybrid.tiles) == ("split", True, 2)
    assert (megatron.layout, megatron.shards_weights) == ("whole", True)
    assert (sequence.layout, sequence.shards_weights) == ("split", False)
    assert (alone.layout, alone.shards_weights, alone.tiles) == ("split", False, 0)
    assert [str(a) for a in hybrid.actions] == ["SCATTER", "AG(t2)", "RS(t2)", "AG", "RS", "GATHER"]


def test_stage_schedule_is_the_one_place_a_layout_becomes_actions():
    assert str(stage_schedule(3, tiles=2)) == "SCATTER | attn:AG(t2)>RS(t2) mlp:AG(t2)>RS(t2) | GATHER"
    assert str(stage_schedule(3, shape="tensor")) == "REP | attn:AR mlp:AR | -"
    assert str(stage_schedule(3, shape="sequence", tiles=4, wire="float16")) == \
        "SCATTER(f16) | attn:KVAG(t4,f16) mlp:- | GATHER(f16)"
    assert str(stage_schedule(3, shape="sequence", algorithm="direct", key_values="KVATT")) == \
        "SCATTER | attn:KVATT(direct) mlp:- | GATHER"
    assert str(stage_schedule(1, tiles=8)) == "REP | attn:- mlp:- | -"
    assert str(stage_schedule(2, first=False, last=False)) == "RECV | attn:AG>RS mlp:AG>RS | SEND"
    assert str(stage_schedule(1, first=True, last=False)) == "REP | attn:- mlp:- | SEND"


def test_format_1_plans_are_read_with_their_schedules():
    v1 = {"format_version": 1, "model": "m", "cluster": "c", "devices": ["a", "b"], "solver": "manual",
          "wire_dtype": "float16", "stages": [
              {"ranks": [0, 1], "first_layer": 0, "end_layer": 2, "heads_per_rank": [2, 2],
               "kv_heads_per_rank": [2, 2], "columns_per_rank": [4, 4], "tokens_per_rank": [3, 3],
               "tiles": 1, "sequence_parallel": False, "tensor_parallel": True}]}
    plan = Plan.from_json(json.loads(json.dumps(v1)))
    assert plan.format_version == FORMAT_VERSION == 2
    assert str(plan.stages[0].schedule) == "REP | attn:AR(f16) mlp:AR(f16) | -"
    assert plan.stages[0].tokens_per_rank == (6, 6)  # Megatron-style: every rank holds every token
    assert plan.wire_dtype == "float16"
    assert Plan.from_json(json.loads(plan.dumps())) == plan


def test_parallel_blocks_run_attention_and_mlp_in_one_block():
    """GPT-J, NeoX, Phi: one all-gather and one reduce-scatter a layer, both blocks in `par`."""
    schedule = stage_schedule(3, tiles=2, parallel=True)
    assert str(schedule) == "SCATTER | par:AG(t2)>RS(t2) | GATHER" and schedule.parallel
    assert schedule.block("attn") is schedule.block("mlp") is schedule.block("par")
    assert [a.op for a in schedule.actions] == ["SCATTER", "AG", "RS", "GATHER"]
    assert str(stage_schedule(3, shape="tensor", parallel=True)) == "REP | par:AR | -"
    assert str(stage_schedule(3, shape="sequence", parallel=True)) == "SCATTER | par:KVAG | GATHER"
    assert "side by side" in schedule.parallelism
