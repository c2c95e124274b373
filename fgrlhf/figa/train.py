"""FIGA / SFT training (``fgrlhf figa``, :mod:`fgrlhf.figa.figa_cli`): one run on the supervised trainer, then the
optional gold evaluation of the base and the trained policy."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fgrlhf.figa.config import FigaTrainConfig
    from fgrlhf.runtime.run_dir import RunDir

log = logging.getLogger(__name__)


def train(cfg: FigaTrainConfig, run: RunDir) -> dict:
    """Train into ``run`` (``ray.init`` must have run), evaluate when ``cfg.eval`` is set, mark it finished."""
    from fgrlhf.evaluation.policy_eval import compare
    from fgrlhf.figa.data import load_pairs, split_records
    from fgrlhf.figa.task import FigaTask
    from fgrlhf.models import load_tokenizer
    from fgrlhf.trainers.supervised import run_supervised_training

    train_records, eval_records = split_records(load_pairs(cfg.data), cfg.data.eval_fraction)
    task = FigaTask(
        cfg.model,
        cfg.figa,
        load_tokenizer(cfg.model.name).pad_token_id,
        cfg.data.max_prompt_tokens,
        cfg.data.max_response_tokens,
    )
    result = run_supervised_training(task, train_records, eval_records, cfg, run)
    if cfg.eval is not None:
        trained = cfg.model.model_copy(update={"name": result["final_dir"]})
        report = compare(cfg.model, trained, cfg.eval, run.path / "eval.json", cfg.method)
        result["eval"] = report["summary"]
        log.info(
            "gold reward %s -> %s (%d held-out prompts)",
            report["summary"][0]["gold_mean"],
            report["summary"][1]["gold_mean"],
            report["summary"][0]["n"],
        )
    run.finish(result)
    return result
