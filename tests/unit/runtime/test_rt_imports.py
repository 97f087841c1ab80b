"""runtime/ ships inside bundles: stdlib, torch and safetensors only, relative imports inside."""
import ast
import sys
from pathlib import Path

import galaxy.runtime

RUNTIME = Path(galaxy.runtime.__file__).resolve().parent
ALLOWED = {"torch", "safetensors"} | set(sys.stdlib_module_names)


def test_runtime_imports_only_stdlib_torch_safetensors_and_itself_relatively():
    offenders = []
    for path in sorted(RUNTIME.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            offenders += [f"{path.name}: {name}" for name in names
                          if name.split(".")[0] not in ALLOWED]
    assert not offenders, offenders
