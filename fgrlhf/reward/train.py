"""Reward-model training (``fgrlhf train-rm``, :mod:`fgrlhf.reward.train_rm_cli`): its config, run spec, loss
choice and eval split."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fgrlhf.config import ModelConfig
from fgrlhf.runtime.run_dir import RunSpec
from fgrlhf.trainers.supervised import STATE_FILE, SUPERVISED_CHANGEABLE, SUPERVISED_EXTENDS, SupervisedConfig

if TYPE_CHECKING:
    from fgrlhf.reward.task import RMLoss


class RMTrainConfig(SupervisedConfig):
    model: ModelConfig = Field(default_factory=ModelConfig)
    kind: Literal["token", "sequence"] = "token"
    loss: Literal["auto", "eq3", "eq4", "bt"] = "auto"
    max_prompt_tokens: int = Field(192, ge=1)
    max_response_tokens: int = Field(300, ge=1)
    eval_fraction: float = Field(0.1, ge=0.0, lt=1.0)


# --data is passed to open_run as an extra input (compared by content).
RM_RUN = RunSpec("train-rm", SUPERVISED_CHANGEABLE, SUPERVISED_EXTENDS, state_file=STATE_FILE)


def resolve_loss(cfg: RMTrainConfig, from_edits: bool, data: str) -> RMLoss:
    """The loss ``cfg.loss`` means for this kind and data; an impossible combination is a clear error."""
    from fgrlhf.config import ConfigError

    if cfg.loss == "auto":
        return "bt" if cfg.kind == "sequence" else "eq4" if from_edits else "eq3"
    if cfg.kind == "sequence" and cfg.loss != "bt":
        raise ConfigError(f"key 'loss': a sequence RM trains with bt, got {cfg.loss}")
    if cfg.kind == "token" and cfg.loss == "bt":
        raise ConfigError("key 'loss': a token RM trains with eq3 or eq4, got bt (use kind=sequence)")
    if cfg.loss == "eq4" and not from_edits:
        raise ConfigError(
            f"key 'loss': eq4 needs edit records (prompt, original, edited, status) from "
            f"`fgrlhf edit`, but {data} holds plain pairs; use loss=eq3 (the paper's "
            f"without-fine-grained-data ablation)"
        )
    return cfg.loss


def split_eval(records: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, eval): a seeded random ``fraction`` held out (at least one pair when fraction > 0)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(fraction * len(records))) if fraction > 0 else 0
    held = set(order[:n_eval])
    return [r for i, r in enumerate(records) if i not in held], [records[i] for i in sorted(held)]
