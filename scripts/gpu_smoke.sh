#!/usr/bin/env bash
# GPU smoke test, at most 8 minutes on one GPU, set-up included. What it does, in order:
# 1. Set-up: with no ./.venv (or $FGRLHF_VENV), the README's bootstrap (scripts/bootstrap.sh); then, on a CUDA
#    machine without vLLM, the `vllm` extra, pinned to the torch already installed, when it resolves and time
#    allows (it is skipped, with the reason in the JSON, otherwise).
# 2. With vLLM: the colocated push, a learner-side model on this GPU pushed into vLLM's worker process through
#    CUDA IPC handles (VLLMEngine.receive_cuda_ipc: no process group, so it works with one GPU, where NCCL
#    refuses two ranks on a device), checked tensor by tensor against what the worker then serves.
# 3. A small random Llama trained with token-reward PPO on Ray: the policy learner's DeepSpeed engine on CUDA
#    in bf16, the rollout engine (vLLM when installed, else HF generate) on CUDA, critic, reward and
#    reference on CPU. Its push goes over NCCL from 2 GPUs on; with one GPU the learner and the rollout actor
#    share it and that push goes over gloo (the JSON says which).
# 4. The paper job's 1-GPU profile (configs/paper-tiny-1gpu.yaml), end to end to its report (Tables 1–3).
#
#   bash scripts/gpu_smoke.sh [OUT_DIR]
#
# Prints one JSON line: status (pass/fail/skipped), setup steps, versions, GPU, the IPC push (seconds,
# tensors checked), the PPO run's push backend, engine and each role's device, seconds per phase, push MB/s,
# and on failure the stage and error. Exit status: 0 pass, 1 fail (or over the limit), 3 skipped: no CUDA
# device visible (nothing was run).
set -uo pipefail
cd "$(dirname "$0")/.."
began=$SECONDS
LIMIT=${FGRLHF_SMOKE_LIMIT_S:-470}  # under 8 minutes with the start-up around it
VENV=${FGRLHF_VENV:-.venv}
left() { echo $((LIMIT - (SECONDS - began))); }
fail() {  # stage, reason: the one JSON line, then exit 1
    python3 -c 'import json, sys; print(json.dumps({"status": "fail", "stage": sys.argv[1], "reason": sys.argv[2]}))' \
        "$1" "$2"
    exit 1
}

bootstrap=skipped
if [ ! -x "$VENV/bin/python" ]; then
    timeout "$(left)" bash scripts/bootstrap.sh >&2 || fail setup "scripts/bootstrap.sh failed or ran past the time limit"
    bootstrap=ran
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if python -c "import vllm" 2>/dev/null; then
    vllm_setup=present
elif ! python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    vllm_setup="skipped: no CUDA (the extra would pull a CUDA torch)"
elif [ "$(left)" -lt 330 ]; then
    vllm_setup="skipped: under 330 s left for the install and the run"
else
    # vLLM pins one torch per release: pinning the installed one makes pip pick a release built for it.
    torch_pin="torch==$(python -c 'import torch; print(torch.__version__.split("+")[0])')"
    if timeout $(($(left) - 270)) python -m pip install -q -e ".[vllm]" "$torch_pin" >&2; then
        vllm_setup=installed
    else
        vllm_setup="failed: pip install -e .[vllm] $torch_pin did not resolve or ran out of time"
    fi
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
out=${1:-$(mktemp -d -t fgrlhf-gpu-smoke-XXXXXX)}
remaining=$(left)
[ "$remaining" -gt 60 ] || fail setup "set-up left under a minute of the time limit"

FGRLHF_SMOKE_DEADLINE=$(($(date +%s) + remaining)) \
FGRLHF_SMOKE_SETUP="{\"bootstrap\": \"$bootstrap\", \"vllm\": \"$vllm_setup\", \"seconds\": $((SECONDS - began))}" \
    timeout "$remaining" python - "$out" <<'EOF'
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

out = Path(sys.argv[1])
summary = {"status": "fail", "out": str(out), "setup": json.loads(os.environ["FGRLHF_SMOKE_SETUP"])}
stage = "start"
began = time.time()
# ~42M parameters (84 MB in bf16): a push large enough to time, small enough to start in seconds.
MODEL = {"dtype": "bfloat16", "tiny_hidden_size": 512, "tiny_layers": 4, "tiny_heads": 8,
         "tiny_intermediate_size": 1376}


def ipc_push() -> dict:
    """A model on this GPU pushed into vLLM's worker (another process) through CUDA IPC handles."""
    import torch

    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm, load_tokenizer
    from fgrlhf.runtime.weight_sync import checksums
    from fgrlhf.workers.vllm_engine import VLLMEngine, share_cuda_tensors

    engine = VLLMEngine(ModelConfig(name="tiny", seed=0, **MODEL), gpu_memory_utilization=0.3,
                        max_model_len=512, max_num_seqs=16)
    try:
        before = engine.weights_checksum()
        learner = load_causal_lm(ModelConfig(name="tiny", seed=1, **MODEL), load_tokenizer("tiny")).to("cuda")
        named = list(learner.named_parameters())
        start = time.time()
        payload, keep = share_cuda_tensors(named)
        engine.receive_cuda_ipc(payload)
        seconds = time.time() - start
        del keep
        served, want = engine.weights_checksum(), checksums(learner.state_dict().items())
        wrong = [n for n, v in want.items() if n not in served or not math.isclose(served[n], v, rel_tol=1e-6)]
        changed = sum(not math.isclose(before[n], served[n], rel_tol=1e-6) for n in want if n in before)
        tokens = engine.generate([[1, 2, 3, 4]], 8, 0.0, 1.0, seed=0)[0]
        nbytes = sum(t.numel() * t.element_size() for _, t in named)
    finally:
        engine.shutdown()
    return {"path": "cuda_ipc", "device": torch.cuda.get_device_name(0), "tensors": len(want),
            "mismatched": wrong[:5], "changed": changed, "mb": round(nbytes / 1e6, 1),
            "seconds": round(seconds, 3), "generated_tokens": len(tokens),
            "ok": not wrong and changed > 0 and len(tokens) > 0}


try:
    stage = "probe"
    import torch

    summary.update(torch=torch.__version__, cuda=torch.version.cuda)
    if not torch.cuda.is_available():
        summary.update(status="skipped", reason="no CUDA device visible: nothing was run")
        print(json.dumps(summary))
        sys.exit(3)
    gpus = torch.cuda.device_count()
    try:
        import vllm

        engine, summary["vllm"] = "vllm", vllm.__version__
    except ImportError:
        engine, summary["vllm"] = "hf", None
    summary.update(gpu=torch.cuda.get_device_name(0), gpus=gpus)

    if engine == "vllm":
        stage = "ipc_push"
        summary["ipc_push"] = ipc_push()
    else:
        summary["ipc_push"] = {"path": None, "reason": "vLLM is not installed: no engine worker to push into"}

    stage = "ppo"
    import ray

    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.cluster import Cluster
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import train

    push = "nccl" if gpus >= 2 else "gloo"
    share = 1 if gpus >= 2 else 0.5  # one GPU: the learner and the rollout actor split it
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"  # self-contained: no data directory needed on the GPU machine
    topics = ["rivers", "bread", "prime numbers", "volcanoes", "chess", "tea", "bridges", "owls"]
    prompts.write_text("".join(json.dumps({"prompt": f"Write two sentences about {t}."}) + "\n"
                               for t in topics * 2), encoding="utf-8")
    steps = 3
    overrides = [
        f"steps={steps}", "save_every=0", f"prompts.path={prompts}", "prompts.limit=16",
        "rollout.max_new_tokens=32", *(f"policy.{k}={v}" for k, v in MODEL.items()),
        "policy_learner.world_size=1", f"policy_learner.num_gpus_per_rank={share}", "policy_learner.bf16=true",
        "policy_learner.micro_batch_size=2", "critic_learner.world_size=1", "critic_learner.micro_batch_size=2",
        f"rollout.engine={engine}", f"rollout.num_gpus={share}", f"weight_sync.backend={push}",
        "weight_sync.bucket_mb=16",
    ]
    if engine == "vllm":  # leave the shared GPU's other half to the learner; tiny model, short sequences
        overrides += ["rollout.engine_kwargs={gpu_memory_utilization: %s, max_model_len: 512, max_num_seqs: 16}"
                      % (0.8 if gpus >= 2 else 0.35)]
    cfg = load_config(PPOTrainConfig, "configs/ppo-tiny-cpu.yaml", overrides)

    devices = {}
    shutdown = Cluster.shutdown

    def device_of(actor):
        return ray.get(actor.__ray_call__.remote(lambda w: str(getattr(w, "device", None))))

    def record_devices(cluster):  # just before the actors go: where each role computed
        devices.update(policy=device_of(cluster.policy[0]), critic=device_of(cluster.critic[0]),
                       reward=device_of(cluster.reward), reference=device_of(cluster.reference),
                       rollout="cuda" if ray.get(cluster.rollout[0].sees_cuda.remote()) else "cpu")
        shutdown(cluster)

    Cluster.shutdown = record_devices
    ray.init(address="local", num_gpus=gpus, include_dashboard=False)
    try:
        record = train(cfg, out / "run")
    finally:
        ray.shutdown()
    metrics = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    phases = {}
    for m in metrics:
        for phase, seconds in m["phase_seconds"].items():
            phases.setdefault(phase, []).append(seconds)
    phase_means = {k: round(sum(v) / len(v), 3) for k, v in phases.items()}
    pushed = (out / "run" / "final" / "model.safetensors").stat().st_size  # the pushed tensors, in bf16
    summary["ppo"] = {
        "engine": engine, "push_backend": push,
        "push_path": "nccl process group" if push == "nccl"
        else "gloo process group (one GPU: NCCL refuses two ranks of a group on one device)",
        "devices": devices, "steps": len(metrics), "seconds_per_phase": phase_means,
        "push_mb": round(pushed / 1e6, 1),
        "push_mb_per_s": round(pushed / 1e6 / phase_means["weight_push"], 1)
        if phase_means.get("weight_push") else None,
        "reward_mean": record.get("reward_mean"), "kl_mean": record.get("kl_mean"),
    }
    stage = "paper"  # the paper job's 1-GPU profile end to end, in its own process and Ray instance
    import subprocess

    paper_began = time.time()
    left = float(os.environ["FGRLHF_SMOKE_DEADLINE"]) - paper_began - 10  # keep time for the JSON line
    if left < 120:  # the tiny profile needs about two minutes: say so rather than run past the limit
        raise TimeoutError(f"only {left:.0f} s of the time limit left for the paper job's 1-GPU profile")
    done = subprocess.run(
        [sys.executable, "-m", "fgrlhf.cli", "paper", "--config", "configs/paper-tiny-1gpu.yaml",
         "--out", str(out / "paper")], capture_output=True, text=True, timeout=left,
    )
    report = out / "paper" / "report.json"
    tables = sorted(k for k in json.loads(report.read_text()) if k.startswith("table_")) if report.exists() else []
    summary["paper"] = {"rc": done.returncode, "seconds": round(time.time() - paper_began, 1), "tables": tables,
                        "stderr_tail": done.stderr[-800:] if done.returncode else ""}
    finite = all(math.isfinite(m[k]) for m in metrics for k in ("reward_mean", "kl_mean", "policy_loss"))
    # The GPU roles on CUDA, the CPU roles (no GPU asked for) on CPU although every GPU is visible to them.
    placed = (devices.get("policy", "").startswith("cuda") and devices.get("rollout") == "cuda"
              and all(devices.get(r) == "cpu" for r in ("critic", "reward", "reference")))
    problems = [text for bad, text in [
        (len(metrics) != steps, "steps missing"), (not finite, "non-finite metrics"),
        (not placed, "a role on the wrong device"),
        (engine == "vllm" and not summary["ipc_push"]["ok"], "the CUDA IPC push did not land"),
        (summary["paper"]["rc"] != 0 or tables != ["table_1", "table_2", "table_3"], "the paper job's 1-GPU profile failed"),
    ] if bad]
    summary["status"] = "fail" if problems else "pass"
    if problems:
        summary["reason"] = "; ".join(problems)
except SystemExit:
    raise
except BaseException as exc:  # the summary line is the contract: report the failure in it
    summary.update(status="fail", stage=stage, error=f"{type(exc).__name__}: {exc}"[:2000],
                   traceback=traceback.format_exc()[-3000:])
summary["seconds"] = round(time.time() - began, 1)
print(json.dumps(summary))
sys.exit(0 if summary["status"] == "pass" else 1)
EOF
rc=$?
if [ "$rc" -eq 124 ]; then
    echo "{\"status\": \"fail\", \"reason\": \"over the time limit ($LIMIT s in all)\"}"
    rc=1
fi
exit "$rc"
