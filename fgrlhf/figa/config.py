"""The ``fgrlhf figa`` config: the supervised loop's settings plus model, pairs, FIGA weights and evaluation.

Kept apart from :mod:`fgrlhf.figa.train` so that the CLI's ``--help`` does not import torch.
"""

from __future__ import annotations

from pydantic import Field

from fgrlhf.config import ModelConfig
from fgrlhf.figa.data import FigaDataConfig
from fgrlhf.figa.task import FigaLossConfig
from fgrlhf.policy_eval import PolicyEvalConfig
from fgrlhf.supervised_trainer import SupervisedConfig


class FigaTrainConfig(SupervisedConfig):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: FigaDataConfig
    figa: FigaLossConfig = Field(default_factory=FigaLossConfig)
    eval: PolicyEvalConfig | None = Field(None, description="gold-reward evaluation after training")
    method: str = Field("figa", description="the run's name in eval.json's summary rows (figa, sft, ...)")
