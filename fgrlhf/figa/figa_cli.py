"""FIGA fine-tuning on Ray + DeepSpeed:
``fgrlhf figa --config FILE --out DIR [--resume | --overwrite] [key=value ...]``.

Pairs of an initial response and its revision (an ``fgrlhf edit`` output file) train the policy with
FIGA's weighted token loss (arXiv 2311.04072; ``figa.alpha/beta/gamma/confidence_threshold``, official-code defaults 1, 0.5, 0, 0.6).
Plain SFT on the revised responses is the same command with ``figa.alpha=1 figa.beta=0 figa.gamma=1``.

Writes DIR/metrics.jsonl, DIR/tb, DIR/checkpoints/step_N (resumable), DIR/final (HF checkpoint: causal LM +
tokenizer) and, with an ``eval:`` section, DIR/eval.json (mean gold reward of the base and the trained
policy on held-out prompts). Connects to the running Ray cluster when RAY_ADDRESS is set (``ray job
submit``), else starts a local one.

A used DIR is refused unless --resume or --overwrite (fgrlhf.runtime.run_dir). --resume may change only epochs,
max_steps, eval_every, save_every, keep_checkpoints and the ranks' CPUs/GPUs/backend; data.edits_path is
compared by content. A finished run resumed with the same settings is not retrained: its result is printed.
"""

from __future__ import annotations

import argparse
import json

from fgrlhf.runtime.run_dir import RESUME_HINT as RESUME_HINT  # what Ctrl-C kept, printed by fgrlhf.cli
from fgrlhf.runtime.run_dir import add_launch_arguments, add_run_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/figa-*.yaml, configs/sft-*.yaml)")
    parser.add_argument("--out", required=True, help="run directory")
    add_run_arguments(parser)
    add_launch_arguments(parser, "run even if the disk under --out cannot hold the run's checkpoints")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. figa.beta=0")


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.figa.config import FIGA_RUN, FigaTrainConfig
    from fgrlhf.figa.train import train
    from fgrlhf.runtime.distributed import ray_instance
    from fgrlhf.runtime.planning import supervised_job
    from fgrlhf.runtime.preflight import check_data, check_model
    from fgrlhf.runtime.run_dir import open_run

    cfg = load_config(FigaTrainConfig, args.config, args.overrides)
    check_model(cfg.model.name, "model.name")  # before Ray
    check_data(cfg.data.edits_path, "data.edits_path")
    run = open_run(args.out, FIGA_RUN, cfg, resume=args.resume, overwrite=args.overwrite)
    if run.done:
        print(json.dumps(run.result))
        return 0
    run.check_space(lambda: supervised_job("figa", cfg), args.force)  # before Ray
    with ray_instance(args.num_cpus):
        result = train(cfg, run)
    print(json.dumps(result))
    return 0
