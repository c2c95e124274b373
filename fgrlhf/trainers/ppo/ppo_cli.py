"""Token-reward PPO on Ray: ``fgrlhf ppo --config FILE --out DIR [--resume | --overwrite] [key=value ...]``.

Writes DIR/metrics.jsonl (one JSON object per step), DIR/tb (TensorBoard), DIR/checkpoints/step_N
(DeepSpeed states of policy and critic + state.json) and DIR/final (the policy as an HF checkpoint).
Connects to the running Ray cluster when RAY_ADDRESS is set (e.g. under ``ray job submit``), else starts
a local one.

A used DIR is refused unless --resume or --overwrite (fgrlhf.runtime.run_dir), before Ray starts. --resume may change
only steps, stop_at_gold, save_every, keep_checkpoints, max_actor_restarts, placement.*, weight_sync.* and
CPUs/GPUs/backends; prompts.path is compared by content. A finished run resumed with the same settings is not
redone: its result is printed.
"""

from __future__ import annotations

import argparse
import json

from fgrlhf.runtime.plan_cli import add_capacity_arguments, check_before_run
from fgrlhf.runtime.run_dir import RESUME_HINT as RESUME_HINT  # what Ctrl-C kept, printed by fgrlhf.cli
from fgrlhf.runtime.run_dir import add_launch_arguments, add_run_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/ppo-*.yaml)")
    parser.add_argument("--out", required=True, help="run directory")
    add_run_arguments(parser)
    add_launch_arguments(
        parser,
        "run even if `fgrlhf plan` says the job does not fit, or the disk under --out cannot hold its checkpoints",
    )
    add_capacity_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. ppo.kl_coef=0.02")


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.runtime.distributed import ray_instance
    from fgrlhf.runtime.planning import ppo_job
    from fgrlhf.runtime.run_dir import open_run
    from fgrlhf.trainers.ppo.config import PPO_RUN, PPOTrainConfig, check_paths
    from fgrlhf.trainers.ppo.trainer import PPOTrainer

    cfg = load_config(PPOTrainConfig, args.config, args.overrides)
    check_paths(cfg)  # before Ray: a missing RM was found ~50 s later inside an actor
    check_before_run(args, "ppo", args.config, list(args.overrides))  # before Ray: a job that cannot fit stops here
    run = open_run(args.out, PPO_RUN, cfg, resume=args.resume, overwrite=args.overwrite)
    if run.done:
        record = run.result
        assert record is not None  # a finished run's run.json holds its result
    else:
        run.check_space(lambda: ppo_job(cfg, args.model_config), args.force)  # before Ray: a full disk stops here
        with ray_instance(args.num_cpus):
            record = PPOTrainer(cfg, run).run()
    print(json.dumps({k: v for k, v in record.items() if k != "phase_seconds"}))
    return 0
