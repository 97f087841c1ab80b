"""Plan reports: show a plan, diff two plans, draw a per-rank timeline, check for regressions.

    read_plan_document(path) -> PlanDocument      plan (+ model summary, cluster), file or bundle
    show_plan(doc) -> str                          galaxy-plan show
    diff_plans(old, new) -> str                    galaxy-plan diff
    write_timeline_png(plan, path)                 galaxy-plan show --png (needs matplotlib)
    check_regression(reference, new, pct) -> Verdict   galaxy-compile --check-against
"""
from galaxy.compiler.report.diff import diff_plans
from galaxy.compiler.report.document import PlanDocument, read_plan_document
from galaxy.compiler.report.regression import EXIT_NOT_COMPARABLE, EXIT_REGRESSION, Verdict, check_regression
from galaxy.compiler.report.show import show_plan

__all__ = ["EXIT_NOT_COMPARABLE", "EXIT_REGRESSION", "PlanDocument", "Verdict", "check_regression", "diff_plans",
           "read_plan_document", "show_plan"]
