"""Dependency direction, checked by parsing imports (docs/ARCHITECTURE.md, STYLE.md).

The compiler's phases import only phases before them:

    ir  <-  capture  <-  passes  <-  cost  <-  planner  <-  lower  <-  codegen

(`errors` is shared by all; `profile` and `report` are tools that may read any phase, and no
phase imports them; `pipeline.py` and `cli.py` drive everything.) Besides the order: the planner
and the cost model never load torch or jinja2 (the solver sees only numbers), the cost model and
codegen never import pulp, and the ILP's slow twins (brute force, baselines, the pipeline DP)
never import the ILP module. `runtime/` is copied into every bundle as `galaxy_runtime`: it uses
the standard library, torch and safetensors, and its own modules through relative imports.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("ir", "capture", "passes", "cost", "planner", "lower", "codegen")
TOOLS = ("profile", "report")
FORBIDDEN = {  # folder or file -> module prefixes it must not import
    "compiler/planner": ("torch", "jinja2"),
    "compiler/cost": ("pulp", "torch", "jinja2"),
    "compiler/codegen": ("pulp",),
    "compiler/planner/brute_force.py": ("galaxy.compiler.planner.ilp",),
    "compiler/planner/baselines.py": ("galaxy.compiler.planner.ilp",),
    "compiler/planner/pipeline_dp.py": ("galaxy.compiler.planner.ilp",),
    "compiler/planner/stage_groups.py": ("galaxy.compiler.planner.ilp",),
    "runtime": ("galaxy",),
}
RUNTIME_ALLOWED = set(sys.stdlib_module_names) | {"torch", "safetensors"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def matches(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def python_files(target: str) -> list[Path]:
    path = ROOT / target
    return [path] if path.suffix == ".py" else sorted(path.rglob("*.py"))


@pytest.mark.parametrize("target", sorted(FORBIDDEN))
def test_forbidden_imports(target):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in python_files(target)
           for line, module in imports(path)
           if any(matches(module, prefix) for prefix in FORBIDDEN[target])]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("phase", PHASES + TOOLS)
def test_phases_import_only_earlier_phases(phase):
    allowed = {"errors", *PHASES[:PHASES.index(phase) + 1]} if phase in PHASES else {"errors", *PHASES, phase}
    bad = []
    for path in python_files(f"compiler/{phase}"):
        for line, module in imports(path):
            if matches(module, "galaxy.compiler"):
                part = module.split(".")[2] if module.count(".") >= 2 else ""
                if part not in allowed:
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not bad, f"compiler/{phase} may import only {sorted(allowed)}:\n" + "\n".join(bad)


def test_runtime_uses_only_stdlib_torch_safetensors():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in python_files("runtime")
           for line, module in imports(path)
           if module.split(".")[0] not in RUNTIME_ALLOWED]
    assert not bad, "runtime/ must use relative imports for its own modules:\n" + "\n".join(bad)


def test_planner_import_loads_no_torch():
    """Transitively too: importing the planner and cost model must not load torch."""
    code = ("import sys, galaxy.compiler.planner, galaxy.compiler.cost; "
            "sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jinja2')) != [])")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
