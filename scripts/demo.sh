#!/usr/bin/env bash
# The main job on the embedded default model (SmolLM2-135M-Instruct), end to end on this machine.
# Extra arguments go to `fgrlhf demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
. "${FGRLHF_VENV:-.venv}/bin/activate"
exec fgrlhf demo "$@"
