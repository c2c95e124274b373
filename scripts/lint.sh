#!/usr/bin/env bash
# Lint, format check and type check (settings in pyproject.toml); .ci/run runs it before the tests.
# Every check runs, so one CI pass shows all that fails; the exit status is non-zero if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1
. "${FGRLHF_VENV:-.venv}/bin/activate"
status=0
ruff check . || status=1
ruff format --check . || status=1
mypy || status=1
exit "$status"
