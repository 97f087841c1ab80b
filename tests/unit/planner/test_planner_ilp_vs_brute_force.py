"""The ILP's optimum equals brute force's on small random instances, and equals predict()."""
from __future__ import annotations

import random

import pytest
from planner_fixtures import random_table

from galaxy.compiler.cost.latency import predict
from galaxy.compiler.errors import InfeasiblePlanError
from galaxy.compiler.planner.brute_force import brute_force_plan
from galaxy.compiler.planner.solve import choose, solve_per_k

TILES = (1, 2, 4)
REL = 2e-6  # the ILP's tie-break and fewer-devices tolerance are 1e-7 and 1e-6 relative

CASES = [  # (seed, devices, groups, column units, tokens, link classes, symmetric links)
    (1, 2, 3, 3, 4, 1, True),
    (2, 2, 2, 3, 5, 2, False),
    (3, 3, 2, 2, 3, 1, True),
    (4, 3, 2, 2, 3, 2, True),
    (5, 3, 1, 2, 4, 3, False),
    (6, 4, 1, 2, 2, 2, True),
    (7, 4, 2, 1, 2, 1, True),
]


@pytest.mark.parametrize("seed,n,groups,units,tokens,classes,symmetric", CASES)
def test_ilp_matches_brute_force(seed, n, groups, units, tokens, classes, symmetric):
    table = random_table(random.Random(seed), n, groups, units, tokens, link_classes=classes, symmetric=symmetric)
    _check_against_brute_force(table, TILES)


def _check_against_brute_force(table, tiles):
    results = solve_per_k(table, tile_choices=tiles)
    chosen = choose(results)
    try:
        exhaustive = brute_force_plan(table, tiles)
    except InfeasiblePlanError:
        assert chosen is None
        return
    assert chosen is not None
    assert chosen.plan.stages[0].schedule.parallel == table.parallel_blocks
    assert chosen.latency_s == pytest.approx(exhaustive.predicted_latency_s, rel=REL)
    for r in results:
        if r.plan is not None:  # the ILP objective is the latency model, exactly
            assert r.objective_s == pytest.approx(predict(r.plan, table)[0], rel=1e-7)


@pytest.mark.parametrize("inputs", [1, 2])
@pytest.mark.parametrize("seed,n,groups,units,tokens,classes,symmetric", CASES[:5])
def test_ilp_matches_brute_force_with_parallel_blocks(seed, n, groups, units, tokens, classes, symmetric, inputs):
    """Parallel attention/MLP blocks (one block row, two collectives a layer; an all-gather of two
    tensors when attention and MLP read different inputs): the ILP still equals brute force and
    predict()."""
    from dataclasses import replace
    table = replace(random_table(random.Random(seed), n, groups, units, tokens, link_classes=classes,
                                 symmetric=symmetric), parallel_block_inputs=inputs)
    _check_against_brute_force(table, TILES if inputs == 1 else (1,))
