#!/usr/bin/env bash
# GPU smoke test (a few minutes, at most 8): a small random Llama trained with token-reward PPO on Ray with the
# policy learner's DeepSpeed engine on CUDA in bf16, the weight push over NCCL (from 2 GPUs on; with one GPU
# the learner and the rollout actor share it and the push uses gloo, as NCCL refuses two ranks on a device)
# and vLLM as the rollout engine when it is importable (else HF generate on the GPU). The critic, reward and
# reference actors run on CPU: this checks the CUDA paths, not throughput.
#
#   bash scripts/gpu_smoke.sh [OUT_DIR]
#
# Prints one JSON line: status (pass/fail/skipped), steps, seconds per phase (mean over steps), push MB/s,
# torch/CUDA/vLLM versions, GPU name and count, the backend and engine used, and on failure the error.
# Exit status: 0 pass, 1 fail (or over 8 minutes), 3 skipped: no CUDA device visible (nothing was run).
set -uo pipefail
cd "$(dirname "$0")/.."
. "${FGRLHF_VENV:-.venv}/bin/activate"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
out=${1:-$(mktemp -d -t fgrlhf-gpu-smoke-XXXXXX)}

timeout 480 python - "$out" <<'EOF'
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

out = Path(sys.argv[1])
summary = {"status": "fail", "out": str(out)}
began = time.time()
try:
    import torch

    summary.update(torch=torch.__version__, cuda=torch.version.cuda)
    if not torch.cuda.is_available():
        summary.update(status="skipped", reason="no CUDA device visible: nothing was run")
        print(json.dumps(summary))
        sys.exit(3)
    gpus = torch.cuda.device_count()
    summary.update(gpu=torch.cuda.get_device_name(0), gpus=gpus)
    try:
        import vllm

        engine, summary["vllm"] = "vllm", vllm.__version__
    except ImportError:
        engine, summary["vllm"] = "hf", None
    push = "nccl" if gpus >= 2 else "gloo"
    share = 1 if gpus >= 2 else 0.5  # one GPU: the learner and the rollout actor split it
    summary.update(engine=engine, push_backend=push)

    import ray

    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.cluster import Cluster
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import train

    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"  # self-contained: no data directory needed on the GPU machine
    topics = ["rivers", "bread", "prime numbers", "volcanoes", "chess", "tea", "bridges", "owls"]
    prompts.write_text("".join(json.dumps({"prompt": f"Write two sentences about {t}."}) + "\n"
                               for t in topics * 2), encoding="utf-8")
    steps = 3
    overrides = [
        f"steps={steps}", "save_every=0", f"prompts.path={prompts}", "prompts.limit=16",
        "rollout.max_new_tokens=32", "policy.dtype=bfloat16",
        # ~42M parameters (84 MB in bf16): a push large enough to time
        "policy.tiny_hidden_size=512", "policy.tiny_layers=4", "policy.tiny_heads=8",
        "policy.tiny_intermediate_size=1376",
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

    def record_devices(cluster):
        devices["policy"] = ray.get(cluster.policy[0].__ray_call__.remote(lambda w: str(w.device)))
        devices["rollout_sees_cuda"] = ray.get(cluster.rollout[0].sees_cuda.remote())
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
    summary.update(
        steps=len(metrics), seconds_per_phase=phase_means, push_mb=round(pushed / 1e6, 1),
        push_mb_per_s=round(pushed / 1e6 / phase_means["weight_push"], 1) if phase_means.get("weight_push") else None,
        learner_device=devices.get("policy"), rollout_on_cuda=devices.get("rollout_sees_cuda"),
        reward_mean=record.get("reward_mean"), kl_mean=record.get("kl_mean"))
    finite = all(math.isfinite(m[k]) for m in metrics for k in ("reward_mean", "kl_mean", "policy_loss"))
    ok = (len(metrics) == steps and finite and str(devices.get("policy", "")).startswith("cuda")
          and devices.get("rollout_sees_cuda") is True)
    summary["status"] = "pass" if ok else "fail"
    if not ok:
        summary["reason"] = "steps missing, non-finite metrics, or an actor not on CUDA"
except SystemExit:
    raise
except BaseException as exc:  # the summary line is the contract: report the failure in it
    summary.update(status="fail", error=f"{type(exc).__name__}: {exc}"[:2000],
                   traceback=traceback.format_exc()[-3000:])
summary["seconds"] = round(time.time() - began, 1)
print(json.dumps(summary))
sys.exit(0 if summary["status"] == "pass" else 1)
EOF
rc=$?
if [ "$rc" -eq 124 ]; then
    echo '{"status": "fail", "reason": "over the 8-minute limit"}'
    rc=1
fi
exit "$rc"
