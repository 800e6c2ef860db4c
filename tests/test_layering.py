"""Imports flow one way (DESIGN §7): each subpackage imports only the layers below it, lazy imports included.

An import-linter "layers" contract written as a test, so CI needs no extra tool: the file's AST is read,
so an `import` inside a function counts like one at the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fine_deploy

# top to bottom; a name may import any name after it
LAYERS = ["cli", "bench", "train", "sample", "export", "planner", "cost", "supernet", "zoo", "pipelines", "components",
          "backbones", "runtime", "fileio", "schemas", "validate", "paths", "console", "errors"]
ROOT = Path(fine_deploy.__file__).parent


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + ([f"{node.module}.{a.name}" for a in node.names] if node.module == "fine_deploy"
                                     else [])
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "fine_deploy" and len(parts) > 1:
                out.add(parts[1])
    return out


def test_every_module_belongs_to_a_layer():
    found = {_package_of(p) for p in ROOT.rglob("*.py")} - {"__init__"}
    assert found <= set(LAYERS), sorted(found - set(LAYERS))


def test_imports_only_go_down():
    rank = {name: i for i, name in enumerate(LAYERS)}
    bad = []
    for path in ROOT.rglob("*.py"):
        pkg = _package_of(path)
        if pkg == "__init__":
            continue
        for target in _imports(path) - {pkg}:
            if target in rank and rank[target] <= rank[pkg]:
                bad.append(f"{path.relative_to(ROOT)} imports {target} (layer {pkg} is below or beside it)")
    assert not bad, "\n".join(sorted(bad))
