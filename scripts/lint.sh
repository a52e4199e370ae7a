#!/usr/bin/env bash
# The lint stage (CI runs it before the tests): ruff lint, ruff format check, mypy on the engine.
# Configuration: pyproject.toml ([tool.ruff], [tool.mypy]). Fix most findings with
#   .venv/bin/ruff check --fix . && .venv/bin/ruff format .
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BIN="${INSTANTFAMILY_VENV:-$REPO/.venv}/bin"
failed=0
echo "[lint] ruff check";  "$BIN/ruff" check . || failed=1
echo "[lint] ruff format --check";  "$BIN/ruff" format --check . || failed=1
echo "[lint] mypy (instantfamily_core)";  "$BIN/mypy" || failed=1
if [[ $failed -ne 0 ]]; then echo "[lint] FAILED"; exit 1; fi
echo "[lint] passed"
