"""The error a reduced wire dtype costs, measured at compile time, and how plans and reports carry it."""
from __future__ import annotations

import pytest

from galaxy.compiler.passes.wire_error import expected_wire_error
from galaxy.compiler.report import PlanDocument, show_plan
from helpers import captured_tiny, manual_plan


@pytest.fixture(scope="module")
def gpt2():
    return captured_tiny("gpt2")


def test_a_float32_wire_rounds_nothing(gpt2):
    captured, graph, summary = gpt2
    assert expected_wire_error(captured, graph, manual_plan(summary, [1, 1], [1, 1], [1, 1])) == {}


def test_fewer_mantissa_bits_cost_more_and_fewer_borders_less(gpt2):
    captured, graph, summary = gpt2

    def error(wire: str, shape: str = "hybrid") -> float:
        plan = manual_plan(summary, [1, 1], [1, 1], [1, 1], wire_dtype=wire, shape=shape)
        return expected_wire_error(captured, graph, plan)["logits"]

    half, brain = error("float16"), error("bfloat16")
    assert 0 < half < brain < 0.1  # bfloat16 keeps 8 mantissa bits, float16 11
    assert error("float16", "tensor") < half  # an all-reduce rounds the block outputs only


def test_the_plan_document_and_show_state_the_error(gpt2):
    captured, graph, summary = gpt2
    plan = manual_plan(summary, [1, 1], [1, 1], [1, 1], wire_dtype="float16")
    error = expected_wire_error(captured, graph, plan)
    document = PlanDocument(plan, summary, wire_error=error)
    assert document.to_json()["expected_max_abs_error"] == error
    assert f"wire float16: expected max abs error logits {error['logits']:.2g}" in show_plan(document)
