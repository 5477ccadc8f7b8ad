"""The tree passes the lint configuration in pyproject.toml (``[tool.ruff]``): style is checked, not
remembered. Skipped where ruff is not installed (the ``test`` extra installs it)."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    if shutil.which("ruff") is None:
        pytest.skip("ruff is not installed (pip install ruff, or the package's test extra)")
    return ["ruff"]


def test_ruff_check_passes_on_src_tests_and_benchmarks():
    result = subprocess.run([*_ruff(), "check", "--no-cache", "src", "tests", "benchmarks"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"ruff check found problems:\n{result.stdout}{result.stderr}"
