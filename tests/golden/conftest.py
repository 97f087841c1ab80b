"""--update-golden: rewrite the golden plans and modules instead of comparing, and list what changed.

    pytest tests/golden --update-golden      (same as python -m tests.golden.update)
"""
from __future__ import annotations

import pytest

UPDATES: list[str] = []


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true", default=False,
                     help="rewrite the golden plans and modules (tests/golden/plans, tests/golden/modules) "
                          "and print what changed")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture
def golden_report() -> list[str]:
    """Lines for the end-of-run summary of --update-golden."""
    return UPDATES


def pytest_terminal_summary(terminalreporter):
    if UPDATES:
        terminalreporter.section("golden plans updated")
        for line in UPDATES:
            terminalreporter.write_line(line)
