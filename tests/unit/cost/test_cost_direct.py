"""Direct collectives, priced by the formulas of cost/actions.py."""
from __future__ import annotations

from dataclasses import replace

import pytest

from galaxy.compiler.cost.actions import Site, charge
from galaxy.compiler.cost.table import CostTable
from galaxy.compiler.ir.schedule import Action


def three(toy: CostTable, shared: bool) -> CostTable:
    """The toy's devices A, B and a copy of B, every link alpha 0.01 s, beta 1e-4 s/byte."""
    n = 3
    alpha = tuple(tuple(0.0 if a == b else 0.01 for b in range(n)) for a in range(n))
    beta = tuple(tuple(0.0 if a == b else 1e-4 for b in range(n)) for a in range(n))
    def grow(t): return t + t[-1:]
    return replace(toy, devices=("A", "B", "C"), alpha_s=alpha, beta_s_per_byte=beta, shared_card=shared,
                   comm_cpu_s_per_byte=grow(toy.comm_cpu_s_per_byte), gemm_rows_speed=grow(toy.gemm_rows_speed))


@pytest.mark.parametrize("op", ["AG", "RS"])
def test_direct_per_pair_moves_the_largest_chunk_once(toy, op):
    table = three(toy, shared=False)
    site = Site(table, (0, 1, 2), (2, 1, 1))
    ring = charge(Action(op, 0), site)
    direct = charge(Action(op, 0, algorithm="direct"), site)
    assert ring.link_s == pytest.approx(2 * (0.01 + 1e-4 * 2 * 1000))  # n - 1 steps of the largest chunk
    assert direct.link_s == pytest.approx(0.01 + 1e-4 * 2 * 1000)  # every pair at once
    # CPU: kappa b (S + (n - 2) x[r]) for each rank
    assert direct.cpu_s_per_rank == pytest.approx((1e-4 * 1000 * (4 + 2), 2e-4 * 1000 * 5, 2e-4 * 1000 * 5))


def test_direct_with_one_card_a_device_sends_its_chunk_n_minus_1_times(toy):
    site = Site(three(toy, shared=True), (0, 1, 2), (2, 1, 1))
    direct = charge(Action("AG", 0, algorithm="direct"), site)
    # A sends its 2 tokens to both peers (4) and receives 2; B sends 2, receives 3
    assert direct.link_s == pytest.approx(0.01 + 1e-4 * 1000 * 4)


def test_fused_direct_hides_the_own_chunk_gemm(toy):
    site = Site(three(toy, shared=False), (0, 1, 2), (2, 1, 1), gemm_s=0.09)
    plain = charge(Action("AG", 0, algorithm="direct"), site)
    fused = charge(Action("AG", 1, algorithm="direct"), site)
    assert plain.hidden_s == 0 and fused.hidden_s == pytest.approx(0.09 / 3)
