"""Peak host memory of one real PPO policy learner step on CPU, for tests/test_planning.py.

``python -m tests.memory_probe MODEL ROWS PROMPT RESPONSE [ENTROPY_COEF]`` builds a 1-rank ZeRO-0 float32
PolicyLearner (the code the Ray actor runs, without Ray), trains two optimizer steps on ROWS random sequences
with the entropy bonus's coefficient ENTROPY_COEF (default 0), and prints one JSON line: the process's RSS after
the imports a worker makes (``baseline``) and the growth of its peak RSS over that baseline (``peak_growth``),
in bytes. Two steps, because the first allocates Adam's moments only after the backward pass; from the second
on, they coexist with the activations.
"""

import json
import sys


def status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, in bytes."""
    with open("/proc/self/status", encoding="utf-8") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))


def reset_peak() -> None:
    """Start the peak (``VmHWM``) at the current RSS. ``getrusage``'s ``ru_maxrss`` cannot be reset and can
    carry the RSS of the process that forked this one (a large pytest process), which is not ours."""
    with open("/proc/self/clear_refs", "w", encoding="utf-8") as clear_refs:
        clear_refs.write("5")


def main() -> None:
    import deepspeed  # noqa: F401  (a worker process imports these before any model)
    import ray  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.models import load_tokenizer
    from fgrlhf.runtime.distributed import free_port
    from fgrlhf.workers.learner_worker import PolicyLearner, PPOUpdate

    name, rows, prompt, response = sys.argv[1], *map(int, sys.argv[2:5])
    entropy_coef = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    load_tokenizer(name)
    baseline = status_bytes("VmRSS")
    reset_peak()
    worker = PolicyLearner(0, 1, DeepSpeedConfig(micro_batch_size=rows), ModelConfig(name=name))
    worker.setup("127.0.0.1", free_port())
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 1000, (prompt,), generator=gen).tolist() for _ in range(rows)]
    responses = [torch.randint(10, 1000, (response,), generator=gen).tolist() for _ in range(rows)]
    worker.evaluate(prompts, responses)  # keeps the shard and its old log-probs, as in a PPO step
    worker.train(
        torch.randn(rows, response, generator=gen),
        PPOUpdate(epochs=2, minibatch_size=rows, clip_eps=0.2, coef=1.0, entropy_coef=entropy_coef),
    )
    peak = status_bytes("VmHWM")
    print(json.dumps({"baseline": baseline, "peak_growth": peak - baseline}))


if __name__ == "__main__":
    main()
