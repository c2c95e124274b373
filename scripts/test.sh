#!/usr/bin/env bash
# Run the test suite in ./.venv (created/updated first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. "${FGRLHF_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec python -m pytest -q "$@"
