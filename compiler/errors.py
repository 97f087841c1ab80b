"""Errors Galaxy raises for bad input. Each names the cause and the fix.

The CLIs catch `GalaxyError` and print its message on one line; anything else is a bug.
"""
from __future__ import annotations


class GalaxyError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ModelLoadError(GalaxyError):
    """MODEL is not a model.py, an HF config.json or a local checkpoint folder."""


class UntraceableModelError(GalaxyError):
    """Capture failed, or the graph has no Transformer layers we can shard."""

    def __init__(self, message: str, op: str | None = None, node: str | None = None):
        where = f" (op {op!r} at node {node!r})" if op or node else ""
        super().__init__(message + where)
        self.op = op
        self.node = node


class ClusterFileError(GalaxyError):
    """A cluster TOML file is malformed; `field` names the offending entry."""

    def __init__(self, path: str, field: str, problem: str):
        super().__init__(f"{path}: field {field!r}: {problem}")
        self.path = path
        self.field = field


class PlanFileError(GalaxyError):
    """A plan JSON file is malformed or does not match the model/cluster."""


class InfeasiblePlanError(GalaxyError):
    """No plan fits the devices' memory. `shortfall_bytes_by_device` says by how much."""

    def __init__(self, message: str, shortfall_bytes_by_device: dict[str, int]):
        super().__init__(message)
        self.shortfall_bytes_by_device = shortfall_bytes_by_device


class OutputDirError(GalaxyError):
    """`-o DIR` names something galaxy-compile must not replace (a file, or a folder that is no bundle)."""


class SolverError(GalaxyError):
    """The ILP solver failed or timed out without a feasible plan."""


class GenerationError(GalaxyError):
    """The model cannot generate (not a causal LM), or a request does not fit the bundle (too long)."""
