"""Golden generated modules: which cases, rendering them, and rewriting them on purpose.

`modules/<case>/rank_<k>.py.golden` is what codegen writes for a tiny model under a hand-written plan
(tests/helpers.py), one case per kind of schedule: hybrid parallelism on uneven devices (with and
without tiles), Megatron-style tensor parallelism, sequence parallelism only and a pipeline.
(The `.golden` suffix keeps the snapshots out of linters and duplicate-code reports.)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from galaxy.compiler.codegen.render import render_rank
from galaxy.compiler.ir.plan import Plan
from galaxy.compiler.lower.shard import lower
from helpers import captured_tiny, manual_plan, pipeline_plan

MODULES = Path(__file__).resolve().parent / "modules"
SUFFIX = ".golden"
MODULE_HINT = ("if the change is intended: python -m tests.golden.update (or pytest tests/golden "
               "--update-golden), and read the diff of tests/golden/modules")


@dataclass(frozen=True)
class ModuleCase:
    model: str  # models/<model>.py, size tiny
    layout: str
    plan: Callable  # ModelSummary -> Plan

    @property
    def name(self) -> str:
        return f"{self.model}-tiny__{self.layout}"

    def folder(self, root: Path = MODULES) -> Path:
        return root / self.name


MODULE_CASES = (
    ModuleCase("bert", "hybrid-2", lambda s: manual_plan(s, [2, 1], [3, 1], [3, 1])),
    ModuleCase("gpt2", "hybrid-3-tiles-2", lambda s: manual_plan(s, [1, 1, 1], [3, 2, 1], [5, 2, 1], tiles=2)),
    ModuleCase("llama", "hybrid-3", lambda s: manual_plan(s, [1, 1, 1], [3, 2, 1], [5, 2, 1])),
    ModuleCase("llama", "megatron-3", lambda s: manual_plan(s, [1, 1, 1], [1, 1, 1], [1, 1, 1], shape="tensor")),
    ModuleCase("llama", "sequence-2", lambda s: manual_plan(s, None, None, [2, 1], tiles=2)),
    ModuleCase("bert", "pipeline-2-1", lambda s: pipeline_plan(s, [(1, [2, 1]), (1, [1])])),
)


@functools.cache
def _model(kind: str):
    return captured_tiny(kind)


def render(case: ModuleCase) -> dict[str, str]:
    """File name -> the source codegen writes for each rank of the case."""
    captured, graph, summary = _model(case.model)
    plan: Plan = case.plan(summary)
    return {f"rank_{r.program.rank}.py": render_rank(r.program)
            for r in lower(graph, captured, plan, f"{case.model}.py")}


def stored(case: ModuleCase, root: Path = MODULES) -> dict[str, str]:
    folder = case.folder(root)
    files = sorted(folder.glob(f"rank_*.py{SUFFIX}")) if folder.is_dir() else []
    return {p.name.removesuffix(SUFFIX): p.read_text() for p in files}


def update_modules(cases=MODULE_CASES, root: Path = MODULES) -> list[str]:
    """Rewrite the golden modules of `cases` and say which files changed."""
    report = []
    for case in cases:
        old, new = stored(case, root), render(case)
        changed = sorted(name for name in new.keys() | old.keys() if old.get(name) != new.get(name))
        report.append(f"== modules/{case.name}: " + (f"rewrote {', '.join(changed)}" if changed else "unchanged"))
        folder = case.folder(root)
        folder.mkdir(parents=True, exist_ok=True)
        for name in old.keys() - new.keys():
            (folder / (name + SUFFIX)).unlink()
        for name, source in new.items():
            (folder / (name + SUFFIX)).write_text(source)
    return report
