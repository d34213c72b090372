"""The house rules of the package layout, read from the code itself (every file's AST).

Dependencies point down: common/ <- generator/, verifier/, learner/ <- services/. A role package
imports only common/ and itself; common/ imports none of them; nothing below services/ imports
services/. Source files stay small enough to read.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OURS = ("common", "generator", "verifier", "learner", "services")
ALLOWED = {
    "common": {"common"},
    "generator": {"common", "generator"},
    "verifier": {"common", "verifier"},
    "learner": {"common", "learner"},
    "services": set(OURS),
}
MAX_LINES = 450


def _sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported_packages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in ``tree``: import statements, also inside
    functions, and ``importlib.import_module("...")`` / ``__import__("...")`` with a literal."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in ("import_module", "__import__") and isinstance(arg, ast.Constant):
                found.append((node.lineno, str(arg.value).split(".")[0]))
    return sorted(found)


def layering_violations() -> list[str]:
    out = []
    for package, allowed in ALLOWED.items():
        for path in _sources(package):
            tree = ast.parse(path.read_text(), str(path))
            for line, top in imported_packages(tree):
                if top in OURS and top not in allowed:
                    out.append(f"{path.relative_to(REPO)}:{line} imports {top}")
    return out


def test_dependencies_point_down_no_role_or_common_module_imports_services():
    assert layering_violations() == []


def test_the_check_sees_every_kind_of_import():
    code = (
        "import services.cli\n"
        "def f():\n"
        "    from services.supervisor import run_up\n"
        "    importlib.import_module('services.status')\n"
        "from . import sibling\n"
    )
    found = imported_packages(ast.parse(code))
    assert found == [(1, "services"), (3, "services"), (4, "services")]


def test_source_files_stay_small():
    big = []
    for package in OURS:
        for path in _sources(package):
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                big.append(f"{path.relative_to(REPO)}: {lines} lines")
    assert big == []


def test_config_and_schemas_import_without_torch():
    code = (
        "import sys, common.config, common.schemas, common.transport, common.shell\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
