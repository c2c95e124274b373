"""Train a token-level or sequence-level reward model on Ray + DeepSpeed.

  fgrlhf train-rm --data EDITS_OR_PAIRS.jsonl --kind token|sequence --model tiny|smollm2|PATH --out DIR
                  [--config configs/rm-*.yaml] [--resume | --overwrite] [key=value ...]

--data holds edit records of ``fgrlhf edit`` (chosen = edited, rejected = original, status "edited" only)
or preference pairs: TRL's prompt/chosen/rejected (strings or conversations), AlpacaFarm's
instruction/input/output_1/output_2/preference, any other schema renamed by --field-map; JSONL, JSON, parquet,
a save_to_disk directory or hf:REPO[:CONFIG[:SPLIT]] (docs/data.md). ``loss: auto`` picks Eq. 4 for a token RM on edit records, Eq. 3
for a token RM on plain pairs (the paper's "without fine-grained data" ablation) and Bradley–Terry for a
sequence RM. A fraction ``eval_fraction`` of the pairs (chosen by ``seed``) is held out for eval.

Writes DIR/metrics.jsonl, DIR/tb, DIR/checkpoints/step_N and DIR/final (the RM, loadable with
``fgrlhf.reward.model.load_reward_model`` and scored by ``fgrlhf eval-rm --rm DIR/final``). Connects to
the running Ray cluster when RAY_ADDRESS is set, else starts a local one.

A used DIR is refused unless --resume or --overwrite (fgrlhf.runtime.run_dir). --resume may change only epochs,
max_steps, eval_every, save_every, keep_checkpoints and the ranks' CPUs/GPUs/backend; --data is compared by
content. A finished run resumed with the same settings and data is not retrained: its result is printed.
"""

from __future__ import annotations

import argparse
import json
import logging

from fgrlhf.data.schemas import add_field_map_argument
from fgrlhf.reward.train import RM_RUN, RMTrainConfig, resolve_loss, split_eval
from fgrlhf.runtime.plan_cli import add_capacity_arguments, check_before_run
from fgrlhf.runtime.run_dir import RESUME_HINT as RESUME_HINT  # what Ctrl-C kept, printed by fgrlhf.cli
from fgrlhf.runtime.run_dir import add_launch_arguments, add_run_arguments

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="edit records (fgrlhf edit) or preference pairs (docs/data.md)")
    add_field_map_argument(parser)
    parser.add_argument("--kind", choices=("token", "sequence"), help="reward-model kind (config key 'kind')")
    parser.add_argument("--model", help="backbone: tiny, smollm2 or an HF checkpoint dir (config key 'model.name')")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--config", help="YAML config (see configs/rm-*.yaml)")
    add_run_arguments(parser)
    add_launch_arguments(
        parser,
        "run even if `fgrlhf plan` says the job does not fit, or the disk under --out cannot hold its checkpoints",
    )
    add_capacity_arguments(parser)
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. deepspeed.zero_stage=3 max_steps=100"
    )


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.reward.data import load_preference_records
    from fgrlhf.reward.task import RewardModelTask
    from fgrlhf.runtime.distributed import ray_instance
    from fgrlhf.runtime.planning import supervised_job
    from fgrlhf.runtime.preflight import check_data, check_model
    from fgrlhf.runtime.run_dir import open_run
    from fgrlhf.trainers.supervised import run_supervised_training

    flags = [f"kind={args.kind}"] * bool(args.kind) + [f"model.name={args.model}"] * bool(args.model)
    cfg = load_config(RMTrainConfig, args.config, flags + list(args.overrides))
    check_data(args.data, "--data")  # before the plan, the data and Ray
    check_model(cfg.model.name, "model.name")
    check_before_run(args, "rm", args.config, flags + list(args.overrides))  # before the data and Ray
    run = open_run(args.out, RM_RUN, cfg, resume=args.resume, overwrite=args.overwrite, inputs={"data": args.data})
    if run.done:
        print(json.dumps(run.result))
        return 0
    run.check_space(lambda: supervised_job("rm", cfg, args.model_config), args.force)  # before the data and Ray
    records, from_edits = load_preference_records(args.data, args.field_map)
    loss = resolve_loss(cfg, from_edits, args.data)
    log.info(
        "%s reward model on %s (%d %s), loss %s",
        cfg.kind,
        args.data,
        len(records),
        "edit records" if from_edits else "plain pairs",
        loss,
    )
    train, held_out = split_eval(records, cfg.eval_fraction, cfg.seed)
    task = RewardModelTask(cfg.kind, loss, cfg.model, cfg.max_prompt_tokens, cfg.max_response_tokens, from_edits)

    with ray_instance(args.num_cpus):
        result = run_supervised_training(task, train, held_out, cfg, run)
    result = {**result, "kind": cfg.kind, "rm_loss": loss}
    run.finish(result)
    print(json.dumps(result))
    return 0
