"""FIGA fine-tuning on Ray + DeepSpeed: ``fgrlhf figa --config FILE --out DIR [--resume] [key=value ...]``.

Pairs of an initial response and its revision (an ``fgrlhf edit`` output file) train the policy with
FIGA's weighted token loss (arXiv 2311.04072; ``figa.alpha/beta/gamma/confidence_threshold``, official-code defaults 1, 0.5, 0, 0.6).
Plain SFT on the revised responses is the same command with ``figa.alpha=1 figa.beta=0 figa.gamma=1``.

Writes DIR/metrics.jsonl, DIR/tb, DIR/checkpoints/step_N (resumable), DIR/final (HF checkpoint: causal LM +
tokenizer) and, with an ``eval:`` section, DIR/eval.json (mean gold reward of the base and the trained
policy on held-out prompts). Connects to the running Ray cluster when RAY_ADDRESS is set (``ray job
submit``), else starts a local one.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fgrlhf.figa.config import FigaTrainConfig

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/figa-*.yaml, configs/sft-*.yaml)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--num-cpus", type=float, default=None,
                        help="CPUs of the local Ray instance started when RAY_ADDRESS is unset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. figa.beta=0")


def train(cfg: FigaTrainConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Train (``ray.init`` must have run), then evaluate when ``cfg.eval`` is set."""
    from fgrlhf.figa.data import load_pairs, split_records
    from fgrlhf.figa.task import FigaTask
    from fgrlhf.models import load_tokenizer
    from fgrlhf.policy_eval import compare
    from fgrlhf.supervised_trainer import run_supervised_training

    out_dir = Path(out_dir)
    train_records, eval_records = split_records(load_pairs(cfg.data), cfg.data.eval_fraction)
    task = FigaTask(cfg.model, cfg.figa, load_tokenizer(cfg.model.name).pad_token_id,
                    cfg.data.max_prompt_tokens, cfg.data.max_response_tokens)
    result = run_supervised_training(task, train_records, eval_records, cfg, out_dir, resume=resume)
    if cfg.eval is not None:
        trained = cfg.model.model_copy(update={"name": result["final_dir"]})
        report = compare(cfg.model, trained, cfg.eval, out_dir / "eval.json", cfg.method)
        result["eval"] = report["summary"]
        log.info("gold reward %s -> %s (%d held-out prompts)", report["summary"][0]["gold_mean"],
                 report["summary"][1]["gold_mean"], report["summary"][0]["n"])
    return result


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.distributed import ray_instance
    from fgrlhf.figa.config import FigaTrainConfig

    cfg = load_config(FigaTrainConfig, args.config, args.overrides)
    with ray_instance(args.num_cpus):
        result = train(cfg, args.out, resume=args.resume)
    print(json.dumps(result))
    return 0
