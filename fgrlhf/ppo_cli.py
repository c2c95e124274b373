"""Token-reward PPO on Ray: ``fgrlhf ppo --config FILE --out DIR [--resume] [key=value ...]``.

Writes DIR/metrics.jsonl (one JSON object per step), DIR/tb (TensorBoard), DIR/checkpoints/step_N
(DeepSpeed states of policy and critic + state.json) and DIR/final (the policy as an HF checkpoint).
Connects to the running Ray cluster when RAY_ADDRESS is set (e.g. under ``ray job submit``), else starts
a local one.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/ppo-*.yaml)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--num-cpus", type=float, default=None,
                        help="CPUs of the local Ray instance started when RAY_ADDRESS is unset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. ppo.kl_coef=0.02")


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.distributed import ray_instance
    from fgrlhf.ppo_trainer import PPOTrainConfig, train

    cfg = load_config(PPOTrainConfig, args.config, args.overrides)
    with ray_instance(args.num_cpus):
        record = train(cfg, args.out, resume=args.resume)
    print(json.dumps({k: v for k, v in record.items() if k != "phase_seconds"}))
    return 0
