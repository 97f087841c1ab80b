"""validate_plan: a hand-written plan that does not fit the model fails with the reason."""
from __future__ import annotations

from dataclasses import replace

import pytest

from galaxy.compiler.errors import PlanFileError
from galaxy.compiler.ir.plan import Plan, StageSplit, validate_plan

MODEL = dict(heads=4, kv_heads=4, intermediate=8, seq_len=6, n_layers=2)


def plan(**stage) -> Plan:
    split = StageSplit(ranks=(0, 1), first_layer=0, end_layer=2, heads_per_rank=(3, 1), kv_heads_per_rank=(3, 1),
                       columns_per_rank=(4, 4), tokens_per_rank=(4, 2))
    return Plan(model="m", cluster="c", devices=("a", "b"), stages=(replace(split, **stage),), solver="manual")


def test_hybrid_shares_must_add_up():
    validate_plan(plan(), **MODEL)
    with pytest.raises(PlanFileError, match=r"columns_per_rank \[4, 3\] must be >= 0 and sum to 8"):
        validate_plan(plan(columns_per_rank=(4, 3)), **MODEL)


def test_sequence_parallel_only_holds_every_head_and_column_on_every_rank():
    full = dict(heads_per_rank=(4, 4), kv_heads_per_rank=(4, 4), columns_per_rank=(8, 8), tensor_parallel=False)
    validate_plan(plan(**full), **MODEL)
    with pytest.raises(PlanFileError, match="every rank holds all 8 columns"):
        validate_plan(plan(**{**full, "columns_per_rank": (4, 4)}), **MODEL)
    with pytest.raises(PlanFileError, match="at least one token per rank"):
        validate_plan(plan(**{**full, "tokens_per_rank": (6, 0)}), **MODEL)
    validate_plan(plan(**{**full, "tiles": 2}), **MODEL)  # keys and values sent tile by tile
