"""validate_plan: a hand-written plan that does not fit the model fails with the reason."""
from __future__ import annotations

from dataclasses import replace

import pytest

from galaxy.compiler.errors import PlanFileError
from galaxy.compiler.ir.plan import Plan, StageSplit, validate_plan
from galaxy.compiler.ir.schedule import StageSchedule

MODEL = dict(heads=4, kv_heads=4, intermediate=8, seq_len=6, n_layers=2)


def plan(**stage) -> Plan:
    split = StageSplit(ranks=(0, 1), first_layer=0, end_layer=2, heads_per_rank=(3, 1), kv_heads_per_rank=(3, 1),
                       columns_per_rank=(4, 4), tokens_per_rank=(4, 2),
                       schedule=StageSchedule.parse("SCATTER | attn:AG>RS mlp:AG>RS | GATHER"))
    return Plan(model="m", cluster="c", devices=("a", "b"), stages=(replace(split, **stage),), solver="manual")


def test_hybrid_shares_must_add_up():
    validate_plan(plan(), **MODEL)
    with pytest.raises(PlanFileError, match=r"columns_per_rank \[4, 3\] must be >= 0 and sum to 8"):
        validate_plan(plan(columns_per_rank=(4, 3)), **MODEL)


def test_sequence_parallel_only_holds_every_head_and_column_on_every_rank():
    full = dict(heads_per_rank=(4, 4), kv_heads_per_rank=(4, 4), columns_per_rank=(8, 8),
                schedule=StageSchedule.parse("SCATTER | attn:KVAG mlp:- | GATHER"))
    validate_plan(plan(**full), **MODEL)
    with pytest.raises(PlanFileError, match="every rank holds all 8 columns"):
        validate_plan(plan(**{**full, "columns_per_rank": (4, 4)}), **MODEL)
    with pytest.raises(PlanFileError, match="at least one token per rank"):
        validate_plan(plan(**{**full, "tokens_per_rank": (6, 0)}), **MODEL)
    tiled = StageSchedule.parse("SCATTER | attn:KVAG(t2) mlp:- | GATHER")  # keys and values sent tile by tile
    validate_plan(plan(**{**full, "schedule": tiled}), **MODEL)


@pytest.mark.parametrize("schedule,tokens,message", [
    ("REP | attn:AR mlp:AR | -", (6, 6), None),
    ("REP | attn:AR mlp:AR | -", (4, 2), "every rank holds all 6 tokens"),
    ("SCATTER | attn:AR mlp:AR | -", (6, 6), "first stage enters with REP or BCAST"),
    ("BCAST | attn:AR(direct) mlp:AR(star) | -", (6, 6), None),
    ("BCAST | attn:AG>RS mlp:AG>RS | GATHER", (4, 2), "BCAST sends rank 0's layer inputs whole"),
    ("SCATTER | attn:AG>RS mlp:AG>RS | -", (4, 2), "exit with GATHER"),
    ("REP | attn:AG>RS mlp:AG>RS | GATHER", (4, 2), "enter with SCATTER"),
    ("SCATTER | attn:AG>RS mlp:AG>RS | SEND", (4, 2), "no next stage to SEND to"),
    ("RECV | attn:AG>RS mlp:AG>RS | GATHER", (4, 2), "has no stage before it"),
    ("REP | attn:AR(t2) mlp:AR | -", (6, 6), "an all-reduce has no tiles"),
])
def test_a_stage_schedule_must_be_one_the_runtime_runs(schedule, tokens, message):
    bad = plan(schedule=StageSchedule.parse(schedule), tokens_per_rank=tokens)
    if message is None:
        validate_plan(bad, **MODEL)
        return
    with pytest.raises(PlanFileError, match=message):
        validate_plan(bad, **MODEL)


def test_every_stage_of_a_pipeline_sends_and_later_ones_receive():
    first = plan().stages[0]
    stages = (replace(first, end_layer=1, schedule=StageSchedule.parse("SCATTER | attn:AG>RS mlp:AG>RS | SEND")),
              replace(first, ranks=(2,), first_layer=1, heads_per_rank=(4,), kv_heads_per_rank=(4,),
                      columns_per_rank=(8,), tokens_per_rank=(6,),
                      schedule=StageSchedule.parse("RECV | attn:- mlp:- | SEND")))
    pipeline = Plan(model="m", cluster="c", devices=("a", "b", "c"), stages=stages, solver="manual")
    validate_plan(pipeline, **MODEL)
    with pytest.raises(PlanFileError, match="a later pipeline stage enters with RECV"):
        validate_plan(replace(pipeline, stages=(stages[0], replace(stages[1], schedule=StageSchedule.parse(
            "REP | attn:- mlp:- | SEND")))), **MODEL)
