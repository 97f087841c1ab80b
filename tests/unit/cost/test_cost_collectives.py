"""Ring collective costs against a step-by-step ring schedule with uneven chunks."""
from __future__ import annotations

from dataclasses import replace

import pytest

from galaxy.compiler.cost.collectives import collective_cpu_s, ring_collective_s, ring_links
from galaxy.compiler.cost.memory import plan_memory_bytes, rank_memory_bytes
from galaxy.compiler.ir.schedule import stage_schedule
from galaxy.compiler.ir.plan import Plan, StageSplit


def simulate_ring_all_gather(chunks: list[int], alpha: float, beta: float) -> tuple[float, list[int]]:
    """Step s: rank r sends chunk (r - s) mod n to r + 1. Returns (time, bytes moved per rank)."""
    n = len(chunks)
    moved = [0] * n
    elapsed = 0.0
    for step in range(n - 1):
        sizes = [chunks[(r - step) % n] for r in range(n)]
        elapsed += max(alpha + beta * size for size in sizes)
        for r, size in enumerate(sizes):
            moved[r] += size  # sent
            moved[(r + 1) % n] += size  # received
    return elapsed, moved


@pytest.mark.parametrize("tokens", [[3, 1], [2, 0, 1], [4, 4, 4, 4], [5, 0, 2, 1]])
def test_ring_time_and_cpu_bytes_match_the_schedule(toy, tokens):
    b = toy.token_wire_bytes
    ring = [0, 1] * (len(tokens) // 2) + [0] * (len(tokens) % 2)  # devices repeat; links are all equal
    t, moved = simulate_ring_all_gather([x * b for x in tokens], 0.01, 1e-4)
    toy_ring = ring_collective_s(toy, ring, max(tokens))
    assert toy_ring == pytest.approx(t)
    # the CPU model charges each rank the mean of what the ranks move: exact in total
    table = replace(toy, tokens=sum(tokens))
    per_rank = collective_cpu_s(table, 0, len(tokens)) / table.comm_cpu_s_per_byte[0]
    assert per_rank * len(tokens) == pytest.approx(sum(moved))


def test_ring_links_wrap_around():
    assert ring_links([4]) == []
    assert ring_links([2, 0, 1]) == [(2, 0), (0, 1), (1, 2)]


def test_tiles_add_alphas(toy):
    assert ring_collective_s(toy, [0, 1], 4, tiles=4) == pytest.approx(4 * (0.01 + 1e-4 * 1000))


def test_plan_memory_by_hand(toy):
    stage = StageSplit((0, 1), 0, 2, (1, 1), (1, 1), (3, 1), (3, 1), stage_schedule(2))
    plan = Plan(model="toy", cluster="toy2", devices=("B", "A"), stages=(stage,), solver="manual")
    # B is rank 0: 2 layers x (1 group x 1000 + 3 columns x 100 + 10) + 50 + 15 + 9 + buffers 7
    # + prologue 20 + epilogue 30
    assert plan_memory_bytes(plan, toy) == {"B": 2 * 1310 + 50 + 15 + 9 + 7 + 20 + 30,
                                            "A": 2 * 1110 + 50 + 5 + 3 + 7 + 20}
    assert rank_memory_bytes(toy, 1, 0, 0, 0, first_stage=False, head=False) == 10 + 7
