"""What import-linter cannot express for a top-level module: `function_app` is an entry point only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_product_never_imports_the_function_entry_point() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "remediate").rglob("*.py")
        if any(m.split(".")[0] == "function_app" for m in imported_modules(p))
    ]
    assert offenders == []


def test_function_app_depends_only_on_the_product_and_the_functions_library() -> None:
    roots = {m.split(".")[0] for m in imported_modules(ROOT / "function_app.py")}
    assert roots <= {"__future__", "json", "logging", "typing", "azure", "remediate"}
    assert not roots & {"sim", "tests"}
