"""KVATT's cost: keys and values exchanged while each rank attends to the blocks in hand."""
from __future__ import annotations

import random
from dataclasses import replace

import pytest
from cost_fixtures import toy_table

from galaxy.compiler.cost.actions import Site, charge
from galaxy.compiler.cost.overlap import blockwise_attention_factor, direct_order, ring_arrivals, waiting_s
from galaxy.compiler.ir.schedule import Action
from galaxy.runtime.direct import arrival_order


def test_two_ranks_by_hand():
    """toy: A holds 3 tokens, B 1. Keys and values: 2 x 1000 B a token. Attention core of both
    groups: A 2 (1 - 0.25 - 0.125) = 1.25 s, B 2.5 s; 2 blocks cost 1.41 x one SDPA."""
    table, f = toy_table(), blockwise_attention_factor(2)
    assert f == 1.41
    site = Site(table, (0, 1), (3, 1))
    own_b = f * 2.5 * 1 * 1 / 16  # B attends its 1 query to its 1 key while A's 3 tokens travel
    a_block = 0.01 + 1e-4 * 3 * 2000  # alpha + beta x bytes: 0.61 s
    for algorithm in ("direct", "ring"):  # on two ranks one step of the ring is the direct send
        got = charge(Action("KVATT", algorithm=algorithm), site)
        assert got.link_s == pytest.approx(a_block)
        assert got.link_s - got.hidden_s == pytest.approx(a_block - own_b)  # A waits for nothing
        moved = [1e-4 * 8000, 2e-4 * 8000]  # kappa 2 (n - 1) / n S b
        extra = [(f - 1) * 1.25 * 3 / 4, (f - 1) * 2.5 * 1 / 4]  # the blockwise core's extra compute
        assert got.cpu_s_per_rank == pytest.approx(tuple(m + e for m, e in zip(moved, extra)))


def test_attention_longer_than_the_transfer_hides_it_all():
    table = replace(toy_table(), beta_s_per_byte=((0.0, 1e-8), (1e-8, 0.0)), alpha_s=((0.0, 1e-6), (1e-6, 0.0)))
    got = charge(Action("KVATT", algorithm="direct"), Site(table, (0, 1), (2, 2)))
    assert got.hidden_s == pytest.approx(got.link_s)


def test_direct_takes_the_slowest_block_and_a_ring_every_step():
    """Four ranks, one link class: direct lasts one (largest) block, the ring n - 1 steps of it."""
    table = replace(toy_table(), devices=tuple("ABCD"), kv_groups=2, tokens=8,
                    attention_s_per_group=(1.0,) * 4, attention_in_s_per_group=(0.25,) * 4,
                    attention_out_s_per_group=(0.125,) * 4, comm_cpu_s_per_byte=(0.0,) * 4,
                    alpha_s=tuple(tuple(0.0 if a == b else 0.01 for b in range(4)) for a in range(4)),
                    beta_s_per_byte=tuple(tuple(0.0 if a == b else 1e-4 for b in range(4)) for a in range(4)))
    site = Site(table, (0, 1, 2, 3), (3, 2, 2, 1))
    block = 0.01 + 1e-4 * 3 * 2000
    assert charge(Action("KVATT", algorithm="direct"), site).link_s == pytest.approx(block)
    assert charge(Action("KVATT"), site).link_s == pytest.approx(3 * block)


def test_waiting_replays_the_runtime_order():
    assert waiting_s(1.0, [(0.5, 1.0), (1.5, 1.0)]) == 0.0  # each block is in before it is needed
    assert waiting_s(1.0, [(3.0, 1.0), (3.5, 1.0)]) == pytest.approx(2.0)  # waits 2 s for the first
    # a ring step's block leaves the previous rank when it takes it in: one step later it is here
    assert ring_arrivals([1.0, 2.0, 2.0], 1.5) == [(1.5, 2.0), (3.0, 2.0)]
    assert ring_arrivals([0.0, 0.0, 0.0], 1.0) == [(1.0, 0.0), (2.0, 0.0)]


@pytest.mark.parametrize("seed", range(10))
def test_the_cost_waits_for_blocks_in_the_order_the_runtime_takes_them(seed):
    rng = random.Random(seed)
    sizes = [rng.choice([0, 1, 2, 3, 3, 5]) for _ in range(rng.randint(2, 5))]
    for me in range(len(sizes)):
        assert direct_order(sizes, me) == arrival_order(sizes, me), (sizes, me)


def simulate_ring(n: int, attend_s: float, step_s: float) -> float:
    """Every rank of a ring of equal ranks runs online_attention's ring loop: attend to the block in
    hand; take the next from the previous rank (it left there when that rank took it in, and
    needs a step on the wire), forward it, attend to it. Returns the longest wait of any rank."""
    taken = [[0.0] * n for _ in range(n)]  # taken[r][s]: when rank r took in the block of step s
    waited = [0.0] * n
    for s in range(1, n):
        for r in range(n):
            ready = taken[r][s - 1] + attend_s
            arrival = taken[(r - 1) % n][s - 1] + step_s
            taken[r][s] = max(ready, arrival)
            waited[r] += taken[r][s] - ready
    return max(waited)


@pytest.mark.parametrize("n,tokens,alpha", [(2, 4, 0.01), (3, 3, 0.2), (4, 2, 0.05), (4, 2, 1e-4)])
def test_ring_cost_matches_a_simulation_of_every_rank(n, tokens, alpha):
    table = replace(toy_table(), devices=tuple("ABCD"[:n]), tokens=n * tokens,
                    attention_s_per_group=(1.0,) * n, attention_in_s_per_group=(0.25,) * n,
                    attention_out_s_per_group=(0.125,) * n, comm_cpu_s_per_byte=(0.0,) * n,
                    alpha_s=tuple(tuple(0.0 if a == b else alpha for b in range(n)) for a in range(n)),
                    beta_s_per_byte=tuple(tuple(0.0 if a == b else 1e-4 for b in range(n)) for a in range(n)))
    got = charge(Action("KVATT"), Site(table, tuple(range(n)), (tokens,) * n))
    step = alpha + 1e-4 * tokens * 2000
    attend = blockwise_attention_factor(n) * 2 * 0.625 * tokens * tokens / (n * tokens) ** 2
    assert got.link_s == pytest.approx((n - 1) * step)
    assert got.link_s - got.hidden_s == pytest.approx(simulate_ring(n, attend, step))
