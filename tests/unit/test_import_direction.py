"""Dependency direction, checked by parsing imports (ARCHITECTURE.md, STYLE.md).

planner/ never imports torch, torch.fx or jinja2 (the solver sees only numbers); cost/ never
imports pulp; codegen/ never imports pulp; runtime/ never imports galaxy.compiler and uses only
the standard library, torch and safetensors (it is copied into bundles as `galaxy_runtime`).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FORBIDDEN = {  # directory -> module prefixes its files must not import
    "compiler/planner": ("torch", "jinja2"),
    "compiler/cost": ("pulp", "torch", "jinja2"),
    "compiler/codegen": ("pulp",),
    "runtime": ("galaxy.compiler",),
}
RUNTIME_ALLOWED = set(sys.stdlib_module_names) | {"torch", "safetensors", "numpy", "__future__"}


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


@pytest.mark.parametrize("directory", sorted(FORBIDDEN))
def test_forbidden_imports(directory):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in sorted((ROOT / directory).rglob("*.py"))
           for line, module in imports(path)
           if any(matches(module, prefix) for prefix in FORBIDDEN[directory])]
    assert not bad, "\n".join(bad)


def test_runtime_uses_only_stdlib_torch_safetensors():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in sorted((ROOT / "runtime").rglob("*.py"))
           for line, module in imports(path)
           if module.split(".")[0] not in RUNTIME_ALLOWED]
    assert not bad, "runtime/ must use relative imports for its own modules:\n" + "\n".join(bad)


def test_planner_import_loads_no_torch():
    """Transitively too: importing the planner and cost model must not load torch."""
    code = ("import sys, galaxy.compiler.planner, galaxy.compiler.cost; "
            "sys.exit(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'jinja2')) != [])")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
