"""The lint stage can fail: the project's own ruff and mypy settings catch the mistakes they are there for."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

WRONG = """\
import os


def count() -> int:
    return "three"


def untyped():
    total: int = "four"
    return total
"""


def _run(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_mypy_with_the_project_config_catches_a_wrong_return_type(tmp_path):
    module = tmp_path / "wrong_types.py"
    module.write_text(WRONG)
    result = _run("mypy", "--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'Incompatible return value type (got "str", expected "int")' in result.stdout
    assert "wrong_types.py:9: error" in result.stdout  # check_untyped_defs: a body without annotations is checked


def test_ruff_with_the_project_config_catches_an_unused_import(tmp_path):
    module = tmp_path / "unused_import.py"
    module.write_text(WRONG)
    result = _run("ruff", "check", "--config", str(ROOT / "pyproject.toml"), "--no-cache", str(module))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "F401" in result.stdout
