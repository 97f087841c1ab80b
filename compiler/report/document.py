"""Plan documents: a plan together with the model summary and cluster it was made for.

    {"format_version": 1, "plan": Plan, "model": ModelSummary, "cluster": Cluster,
     "expected_max_abs_error": {output: error},
     "generation": Generation, "decode_model": ModelSummary}

is what `galaxy-compile --save-plan` writes, and the first keys of a bundle's plan.json. The
expected error is there when the plan sends activations in less than float32
(passes/wire_error.py measured it at compile time). A generation bundle (galaxy-compile
--max-len) adds its decode plan and predictions (ir/generation.py) and the summary of the
one-token capture the decode plan was priced on. A bare
Plan JSON (hand-written, or saved before plans carried their model) is read too; it has no
summary or cluster, so its memory per device and its re-predicted times are unknown.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from galaxy.compiler.cost.table import CostTable, build_cost_table
from galaxy.compiler.errors import PlanFileError
from galaxy.compiler.ir.cluster import Cluster
from galaxy.compiler.ir.generation import Generation
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.ir.summary import ModelSummary

DOCUMENT_VERSION = 1


@dataclass(frozen=True)
class PlanDocument:
    plan: Plan
    summary: ModelSummary | None = None
    cluster: Cluster | None = None
    path: str = ""  # where it was read from ("" if built in memory)
    wire_error: dict[str, float] | None = None  # expected max abs error of each output (reduced wire dtype)
    generation: Generation | None = None  # a generation bundle's decode plan and predictions
    decode_summary: ModelSummary | None = None  # the one-token capture the decode plan was priced on

    @property
    def label(self) -> str:
        return self.path or f"{self.plan.model} on {self.plan.cluster}"

    def to_json(self) -> dict:
        """The document; without a cluster (a hand-written plan's bundle) it has no "cluster" key."""
        if self.summary is None:
            raise ValueError("a plan document needs the model summary")
        return {"format_version": DOCUMENT_VERSION, "plan": self.plan.to_json(), "model": self.summary.to_json(),
                **({"cluster": self.cluster.to_json()} if self.cluster else {}),
                **({"expected_max_abs_error": self.wire_error} if self.wire_error else {}),
                **({"generation": self.generation.to_json()} if self.generation else {}),
                **({"decode_model": self.decode_summary.to_json()} if self.decode_summary else {})}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.dumps())

    def cost_table(self) -> CostTable | None:
        """The cost table the plan was made from, or None for a bare plan."""
        if self.summary is None or self.cluster is None:
            return None
        return build_cost_table(self.summary, self.cluster, self.plan.wire_dtype)


def document_from_json(data: dict, path: str = "") -> PlanDocument:
    """A plan document, or a bare plan (it has "stages" at the top level)."""
    if "stages" in data:
        return PlanDocument(_plan(data, path), path=path)
    if "plan" not in data:
        raise PlanFileError(f"{path or 'plan document'}: neither a plan nor a plan document (no 'plan' key)")
    try:
        summary = ModelSummary.from_json(data["model"]) if data.get("model") else None
        cluster = Cluster.from_json(data["cluster"]) if data.get("cluster") else None
        generation = Generation.from_json(data["generation"]) if data.get("generation") else None
        decode_summary = ModelSummary.from_json(data["decode_model"]) if data.get("decode_model") else None
    except (KeyError, TypeError) as exc:
        raise PlanFileError(f"{path or 'plan document'}: malformed model, cluster or generation: {exc}") from exc
    return PlanDocument(_plan(data["plan"], path), summary, cluster, path, data.get("expected_max_abs_error"),
                        generation, decode_summary)


def _plan(data: dict, path: str) -> Plan:
    try:
        return Plan.from_json(data)
    except PlanFileError as exc:
        raise PlanFileError(f"{path}: {exc}" if path else str(exc)) from exc


def read_plan_document(path: str | Path) -> PlanDocument:
    """Read a plan file, a plan document, or a bundle directory (its plan.json)."""
    path = Path(path)
    file = path / "plan.json" if path.is_dir() else path
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlanFileError(f"cannot read plan {file}: {exc}") from exc
    if not isinstance(data, dict):
        raise PlanFileError(f"{file}: expected a JSON object")
    return document_from_json(data, str(path))
