"""The layers declared in pyproject.toml hold (import-linter, as `make lint` runs it), and an upward import
breaks them: a test on a temporary copy of the code proves the contract is not toothless."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(where: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(where)}
    return subprocess.run([str(LINT_IMPORTS)], cwd=where, env=env, capture_output=True, text=True, timeout=300)


def test_the_declared_layers_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    for package in ("functions", "shared"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lake = tmp_path / "shared" / "ingestion" / "lake.py"
    lake.write_text(lake.read_text() + "\nfrom shared.campaign import service as _upward  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "shared.ingestion.lake -> shared.campaign.service" in result.stdout


def test_no_import_hides_inside_a_function_to_dodge_a_cycle():
    """Imports inside functions in shared/ are only of heavy optional libraries, never of our own modules."""
    hidden = []
    for path in (ROOT / "shared").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("shared"):
                        hidden.append(f"{path.relative_to(ROOT)}:{inner.lineno} {inner.module}")
    assert hidden == []


def test_no_function_in_the_product_runs_past_60_lines():
    """Long functions hide their steps; name them instead (the PQL grammar's transformer is a table)."""
    long = []
    for package in ("functions", "shared"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > 60:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long
