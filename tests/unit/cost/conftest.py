"""pytest fixtures for cost tests; the data lives in cost_fixtures.py (a unique module name)."""
from __future__ import annotations

import pytest
from cost_fixtures import toy_table

from galaxy.compiler.cost.table import CostTable


@pytest.fixture
def toy() -> CostTable:
    return toy_table()
