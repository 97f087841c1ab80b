"""predict() against latencies computed by hand on the two-device toy (conftest.toy_table)."""
from __future__ import annotations

import pytest

from galaxy.compiler.cost.latency import block_s, predict
from galaxy.compiler.ir.plan import Plan, StageSplit
from galaxy.compiler.ir.schedule import StageSchedule, stage_schedule

ALONE = StageSchedule.parse("REP | attn:- mlp:- | -")


def hmp(tiles: int) -> Plan:
    stage = StageSplit(ranks=(0, 1), first_layer=0, end_layer=2, heads_per_rank=(1, 1), kv_heads_per_rank=(1, 1),
                       columns_per_rank=(3, 1), tokens_per_rank=(3, 1), schedule=stage_schedule(2, tiles=tiles))
    return Plan(model="toy", cluster="toy2", devices=("A", "B"), stages=(stage,), solver="manual")


def test_two_devices_untiled(toy):
    ring = 1 * (0.01 + 1e-4 * 3 * 1000)            # n-1 steps x (alpha + beta x largest chunk of 3 tokens)
    cpu_a, cpu_b = 2 * 1e-4 * 4000, 2 * 2e-4 * 4000  # 2 collectives x kappa x 2(n-1)/n x S b
    attention = max(1 * 1.0 + cpu_a, 1 * 2.0 + cpu_b) + 2 * ring
    connective = max(3 * 0.01, 1 * 0.02)
    mlp = max(3 * 0.5 + cpu_a, 1 * 1.0 + cpu_b) + 2 * ring
    scatter = 0.01 + 1e-4 * 1 * 1000  # A -> B link for B's token; A's CPU to send it, with its prologue
    prologue = max(0.1 + 1e-4 * 1 * 1000, 0.2) + scatter
    gather = 1e-4 * 1 * 1000 + (0.01 + 1e-4 * 1 * 1000)  # head CPU for B's token, B -> A link
    expected = prologue + 2 * (attention + connective + mlp) + gather + 0.2
    assert expected == pytest.approx(15.66)
    latency, blocks = predict(hmp(0), toy)
    assert latency == pytest.approx(expected, rel=1e-12)
    assert [b.block for b in blocks] == ["prologue", "attention", "connective", "mlp", "handoff", "epilogue"]
    assert [b.actions for b in blocks] == [("SCATTER",), ("AG(t0)", "RS(t0)"), (), ("AG(t0)", "RS(t0)"),
                                           ("GATHER",), ()]
    assert blocks[1].comm_cpu_s_per_rank == pytest.approx((cpu_a, cpu_b))


def test_two_devices_two_tiles(toy):
    ring2 = 2 * 1 * (0.01 + 1e-4 * 1500)  # both tiles, each a chunk of 1.5 tokens and its own alpha
    piece = ring2 / 2  # (n - 1) t = 2 pieces on each link

    def exposed(gemm: float) -> float:  # n = 2, t = 2: g = G / 4
        return max(0.0, ring2 + gemm / 4 - gemm, piece - gemm / 2)

    attention = (2.0 + 1.6) + exposed(min(0.25, 0.5)) + exposed(min(0.125, 0.25))
    mlp = (1.0 + 1.6) + exposed(min(3 * 0.125, 0.25)) + exposed(min(3 * 0.125, 0.25))
    expected = 0.31 + 2 * (attention + 0.03 + mlp) + 0.41
    assert expected == pytest.approx(14.4275)
    latency, blocks = predict(hmp(2), toy)
    assert latency == pytest.approx(expected, rel=1e-12)
    assert blocks[1].comm_s == pytest.approx(2 * ring2) and blocks[1].hidden_s > 0


def test_two_devices_chunk_overlap(toy):
    """Tiles 1: each rank computes on its own chunk while the peer's moves; for n = 2 the ring
    shows beyond half the GEMM (cost/overlap.py, exposed(1) = ring - G/2)."""
    ring = 0.01 + 1e-4 * 3 * 1000
    untiled, _ = predict(hmp(0), toy)
    latency, blocks = predict(hmp(1), toy)
    hidden = [min(ring, min(0.25, 0.5) / 2), min(ring, min(0.125, 0.25) / 2),
              min(ring, min(3 * 0.125, 0.25) / 2), min(ring, min(3 * 0.125, 0.25) / 2)]
    assert untiled - latency == pytest.approx(2 * sum(hidden), rel=1e-12)
    assert blocks[1].hidden_s == pytest.approx(hidden[0] + hidden[1])


def test_token_tiles_slow_the_fused_gemms(toy):
    """With a rows curve, the GEMMs next to a fused collective run on pieces of S / (n t) rows: at 4
    tokens, 2 ranks and 1 tile, pieces of 2 rows, at half the speed of 4 rows: each fused GEMM
    takes twice as long, charged to its rank."""
    from dataclasses import replace
    slow = replace(toy, gemm_rows_speed=(((2, 0.5), (4, 1.0)),) * 2)
    _, flat_blocks = predict(hmp(1), toy)
    _, blocks = predict(hmp(1), slow)
    assert [s - f for s, f in zip(blocks[1].compute_s_per_rank, flat_blocks[1].compute_s_per_rank)] == \
        pytest.approx([0.25 + 0.125, 0.5 + 0.25])
    untiled_flat, _ = predict(hmp(0), toy)
    untiled_slow, _ = predict(hmp(0), slow)
    assert untiled_slow == untiled_flat  # tiles 0: whole GEMMs


def test_pipeline_of_two_stages(toy):
    plan = Plan(model="toy", cluster="toy2", devices=("A", "B"), stages=two_stages(), solver="manual")
    stage_a = 2 * 1.0 + 4 * 0.01 + 4 * 0.5
    transfer = 0.01 + 1e-4 * 4000 + 2e-4 * 4000  # link A -> B, B's CPU to receive
    stage_b = 2 * 2.0 + 4 * 0.02 + 4 * 1.0
    back = 0.2 + 1e-4 * 4000 + 0.01 + 1e-4 * 4000  # epilogue, A's CPU and link to receive it all
    latency, blocks = predict(plan, toy)
    assert latency == pytest.approx(0.1 + stage_a + transfer + stage_b + back, rel=1e-12)
    assert [b.block for b in blocks].count("transfer") == 1
    assert [b.actions for b in blocks if b.actions] == [("SEND",), ("RECV",), ("SEND",), ("RECV",)]


def two_stages() -> tuple[StageSplit, StageSplit]:
    return (StageSplit((0,), 0, 1, (2,), (2,), (4,), (4,), stage_schedule(1, first=True, last=False)),
            StageSplit((1,), 1, 2, (2,), (2,), (4,), (4,), stage_schedule(1, first=False, last=True)))


def test_one_device_has_no_communication(toy):
    stage = StageSplit((0,), 0, 2, (2,), (2,), (4,), (4,), ALONE)
    plan = Plan(model="toy", cluster="toy2", devices=("B",), stages=(stage,), solver="manual")
    latency, blocks = predict(plan, toy)
    assert latency == pytest.approx(0.2 + 2 * (2 * 2.0 + 4 * 0.02 + 4 * 1.0) + 0.4, rel=1e-12)
    assert all(b.comm_s == 0 and b.hidden_s == 0 for b in blocks)


def test_latency_is_the_sum_of_block_times(toy):
    plan = hmp(2)
    latency, blocks = predict(plan, toy)
    assert latency == pytest.approx(sum(block_s(b) * (2 if b.per_layer else 1) for b in blocks), rel=1e-12)


def test_sequence_parallel_only(toy):
    """Whole layers on 3 and 1 tokens; one all-gather of keys and values (2 / g = 2 hidden-stream
    bytes a token) per layer, no collective after attention or the MLP."""
    stage = StageSplit((0, 1), 0, 2, (2, 2), (2, 2), (4, 4), (3, 1), stage_schedule(2, shape="sequence"))
    plan = Plan(model="toy", cluster="toy2", devices=("A", "B"), stages=(stage,), solver="manual")
    gather = 1 * (0.01 + 1e-4 * 3 * 2000)  # one step, largest chunk 3 tokens of 2000 B
    cpu_a, cpu_b = 1e-4 * 8000, 2e-4 * 8000  # kappa x 2(n-1)/n x S x 2000 B
    attention = max(3 / 4 * 2 * 1.0 + cpu_a, 1 / 4 * 2 * 2.0 + cpu_b) + gather
    mlp = max(3 / 4 * 4 * 0.5, 1 / 4 * 4 * 1.0)
    expected = 0.31 + 2 * (attention + max(0.03, 0.02) + mlp) + 0.41
    latency, blocks = predict(plan, toy)
    assert latency == pytest.approx(expected, rel=1e-12)
    assert [b.comm_s for b in blocks[1:4]] == pytest.approx([gather, 0.0, 0.0])


def test_hand_offs_and_the_head_gather_move_every_hidden_stream_tensor(toy):
    """GPT-2 and Llama hand the residual over beside the normed stream: two messages, twice the bytes."""
    from dataclasses import replace
    plan = Plan(model="toy", cluster="toy2", devices=("A", "B"), stages=two_stages(), solver="manual")
    one = {b.block: b for b in predict(plan, toy)[1]}
    two = {b.block: b for b in predict(plan, replace(toy, entry_tensors=2, head_tensors=2))[1]}
    for block in ("transfer", "epilogue"):
        assert two[block].comm_s == pytest.approx(2 * one[block].comm_s) and one[block].comm_s > 0
    assert two["transfer"].compute_s_per_rank == pytest.approx((2 * 2e-4 * 4 * 1000,))  # B takes all 4 tokens
