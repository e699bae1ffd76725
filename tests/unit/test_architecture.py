"""The dependency rule (shared/DESIGN.md §2), lint and the core's types, checked on every run.

The contracts live in pyproject.toml ([tool.importlinter]); a wrong import anywhere in the tree
fails this test, and so does a ruff finding or a type error in the pure core.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = BIN / name
    if not exe.exists():
        pytest.fail(f"{name} is not installed in this environment: pip install -e '.[test]'")
    return subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_the_import_contracts_hold() -> None:
    result = run_tool("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_ruff_finds_nothing() -> None:
    result = run_tool("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_the_core_and_the_ports_type_check_strictly() -> None:
    result = run_tool("mypy", "--no-incremental")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
