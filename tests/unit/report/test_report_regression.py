"""--check-against: worse by more than the allowance fails (3); another model or cluster is
not comparable (4); the same plan passes."""
from __future__ import annotations

from dataclasses import replace

from report_fixtures import baseline, current, golden

from galaxy.compiler.ir.cluster_file import load_cluster
from galaxy.compiler.report import EXIT_NOT_COMPARABLE, EXIT_REGRESSION, PlanDocument, check_regression


def test_same_plan_passes():
    verdict = check_regression(current(), current(), 0.0)
    assert (verdict.ok, verdict.exit_code) == (True, 0)
    assert "(+0.0%, within +0%)" in verdict.message


def test_even_split_is_a_regression_unless_allowed():
    reference, worse = golden(), baseline(golden())
    verdict = check_regression(reference, worse, 5.0)
    assert (verdict.ok, verdict.exit_code) == (False, EXIT_REGRESSION)
    new = worse.plan.predicted_latency_s
    assert verdict.message == (f"predicted latency {new * 1e3:.2f} ms vs 751.05 ms of reference "
                               f"bert-base__four-uneven ({(new / 0.75105 - 1) * 100:+.1f}%, more than the allowed +5%)")
    assert check_regression(reference, worse, (new / 0.75105 - 1) * 100 + 1).ok
    assert check_regression(worse, reference, 0.0).ok  # faster is never a regression


def test_other_model_or_cluster_is_not_comparable():
    ref = golden()
    other = PlanDocument(ref.plan, replace(ref.summary, seq_len=128), load_cluster("clusters/home-3.toml"))
    verdict = check_regression(ref, other, 100.0)
    assert (verdict.ok, verdict.exit_code) == (False, EXIT_NOT_COMPARABLE)
    assert "it was made for another model summary (seq_len 256 -> 128)" in verdict.message
    assert "it was made for cluster four-uneven, not home-3" in verdict.message
    assert "\n" not in verdict.message


def test_bare_reference_is_matched_by_names():
    ref = PlanDocument(current().plan, path="ref.json")
    verdict = check_regression(ref, current(), 0.0)
    assert verdict.ok and "matched by model and cluster names only" in verdict.message
    renamed = PlanDocument(replace(golden().plan, cluster="elsewhere"), path="ref.json")
    assert "made for cluster elsewhere, not four-uneven" in check_regression(renamed, golden(), 0.0).message


def test_new_plan_without_stored_prediction_is_predicted():
    new = golden()
    new = PlanDocument(replace(new.plan, predicted_latency_s=0.0, predicted_blocks=()), new.summary, new.cluster)
    assert check_regression(current(), new, 0.0).ok
