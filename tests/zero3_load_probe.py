"""Peak host memory of loading one learner model on one rank, for tests/test_zero3_loading.py.

``python -m tests.zero3_load_probe RANK WORLD PORT ZERO_STAGE ROLE DIRECTORY`` joins a gloo group of WORLD
processes (rendezvous on 127.0.0.1:PORT), loads the model the way the PPO learner of ROLE does (``policy``: the
causal-LM checkpoint DIRECTORY; ``critic``: the reward-model directory DIRECTORY through ``load_critic`` with a
zero head, both under ``zero3_init``) and prints one JSON line, in bytes: the growth of the process's peak RSS
over its RSS before loading (``peak_growth``), the size of the model's weights (``model``), this rank's share
of them (``partition``: the ZeRO-3 partitions, or everything below stage 3) and its largest parameter
(``largest``).
"""

import json
import sys

from tests.memory_probe import reset_peak, status_bytes


def main() -> None:
    import deepspeed  # noqa: F401  (a worker process imports these before any model)
    import torch
    import transformers  # noqa: F401

    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.models import load_causal_lm
    from fgrlhf.runtime.distributed import init_rank, leave_group, zero3_init
    from fgrlhf.workers.learner_worker import load_critic

    rank, world, port, stage = map(int, sys.argv[1:5])
    role, directory = sys.argv[5:7]
    torch.set_num_threads(1)
    init_rank(rank, world, "127.0.0.1", port, "gloo")
    try:
        ds = DeepSpeedConfig(zero_stage=stage, world_size=world, micro_batch_size=1)
        baseline = status_bytes("VmRSS")
        reset_peak()
        with zero3_init(ds, tiny_model=True):
            model = load_causal_lm(ModelConfig(name=directory)) if role == "policy" else load_critic(directory, "zero")
        peak = status_bytes("VmHWM")
        params = list(model.parameters())
        whole = [getattr(p, "ds_numel", p.numel()) * p.element_size() for p in params]
        held = [(p.ds_tensor if hasattr(p, "ds_tensor") else p).numel() * p.element_size() for p in params]
        torch.distributed.barrier()  # no rank leaves (and tears the group down) while another still loads
        print(
            json.dumps(
                {"peak_growth": peak - baseline, "model": sum(whole), "partition": sum(held), "largest": max(whole)}
            )
        )
    finally:
        leave_group()  # exiting with a live gloo group can abort the process in its destructors (rc -6)


if __name__ == "__main__":
    main()
