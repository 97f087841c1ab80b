"""pytest fixtures for planner tests; the data lives in planner_fixtures.py (a unique module name)."""
from __future__ import annotations

import pytest
from planner_fixtures import bert_base, llama_70b

from galaxy.compiler.ir.summary import ModelSummary


@pytest.fixture
def bert() -> ModelSummary:
    return bert_base()


@pytest.fixture
def llama70b() -> ModelSummary:
    return llama_70b()
