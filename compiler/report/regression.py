"""`galaxy-compile --check-against REF --max-regression PCT`: is the new plan predicted slower
than a reference plan by more than PCT percent?

The comparison is of predicted latencies: the reference's as stored (what its planner
promised), the new plan's from `predict` under today's cost model. The two are comparable only
when both plans were made for the same model summary and cluster; otherwise the verdict says
what differs instead of comparing.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from galaxy.compiler.cost.latency import predict
from galaxy.compiler.report.diff import cluster_differences, differences
from galaxy.compiler.report.document import PlanDocument
from galaxy.compiler.report.text import ms, ms_decimals

EXIT_REGRESSION = 3  # the new plan is slower than allowed
EXIT_NOT_COMPARABLE = 4  # the reference was made for another model summary or cluster


@dataclass(frozen=True)
class Verdict:
    ok: bool
    exit_code: int  # 0, EXIT_REGRESSION or EXIT_NOT_COMPARABLE
    message: str  # one line


def check_regression(reference: PlanDocument, new: PlanDocument, max_regression_pct: float) -> Verdict:
    mismatch = mismatch_reason(reference, new)
    if mismatch:
        return Verdict(False, EXIT_NOT_COMPARABLE,
                       f"reference plan {reference.label} is not comparable: {mismatch}; "
                       "re-make the reference for this model and cluster")
    old_s = reference.plan.predicted_latency_s or _predicted(reference)
    new_s = _predicted(new)
    if not old_s:
        return Verdict(False, EXIT_NOT_COMPARABLE, f"reference plan {reference.label} has no predicted latency")
    change = (new_s - old_s) / old_s * 100
    dec = ms_decimals(max(old_s, new_s))
    what = (f"predicted latency {ms(new_s, dec)} ms vs {ms(old_s, dec)} ms of reference {reference.label} "
            f"({change:+.1f}%")
    if reference.summary is None or reference.cluster is None:
        what = f"{what}; a bare reference plan, matched by model and cluster names only"
    if change > max_regression_pct:
        return Verdict(False, EXIT_REGRESSION, f"{what}, more than the allowed +{max_regression_pct:g}%)")
    return Verdict(True, 0, f"{what}, within +{max_regression_pct:g}%)")


def mismatch_reason(reference: PlanDocument, new: PlanDocument) -> str:
    """Why the reference does not describe the same problem as `new`; "" if it does."""
    reasons = []
    if reference.summary is not None and new.summary is not None:
        if reference.summary != new.summary:
            detail = differences(asdict(reference.summary), asdict(new.summary))
            reasons.append(f"it was made for another model summary ({detail})")
    elif reference.plan.model != new.plan.model:
        reasons.append(f"it was made for model {reference.plan.model}, not {new.plan.model}")
    if reference.cluster is not None and new.cluster is not None:
        if reference.cluster != new.cluster:
            old, now = reference.cluster.name, new.cluster.name
            detail = cluster_differences(reference.cluster, new.cluster)
            reasons.append(f"it was made for cluster {old + ', not ' + now if old != now else 'another ' + now}"
                           + (f" ({detail})" if detail else ""))
    elif reference.plan.cluster != new.plan.cluster:
        reasons.append(f"it was made for cluster {reference.plan.cluster}, not {new.plan.cluster}")
    return "; ".join(reasons)


def _predicted(doc: PlanDocument) -> float:
    """The plan's latency under today's cost model (its stored figure for a bare plan)."""
    table = doc.cost_table()
    return predict(doc.plan, table)[0] if table else doc.plan.predicted_latency_s
