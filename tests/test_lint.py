"""engine/, tests/ and examples/ pass `ruff check` (rules in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    """ruff from the environment running the tests (the `dev` extra), else from PATH."""
    here = Path(sys.executable).with_name("ruff")
    found = str(here) if here.exists() else shutil.which("ruff")
    assert found, "ruff is not installed: pip install -e '.[dev]'"
    return [found]


def test_ruff_check_is_clean():
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "engine", "tests", "examples"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_flags_a_blind_except(tmp_path):
    """The configured rules are the ones that apply: a bare `except Exception` without its noqa
    marker is an error."""
    source = tmp_path / "blind.py"
    source.write_text("def f() -> None:\n    try:\n        pass\n    except Exception:\n        pass\n")
    proc = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(source)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "BLE001" in proc.stdout, proc.stdout + proc.stderr
