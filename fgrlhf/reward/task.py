"""The reward-model task of :mod:`fgrlhf.trainers.supervised`: Eq. 3 / Eq. 4 token RMs, Bradley–Terry sequence RMs.

``loss``: ``eq4`` (token RM on edit records: only changed tokens U1 enter the margin), ``eq3`` (token RM,
mean token reward; on plain pairs this is the paper's "without fine-grained data" ablation), ``bt``
(sequence RM, AlpacaFarm). Metrics: ``accuracy`` (pairwise, on the RM's sequence score R(τ)) and
``margin`` (mean R(chosen) − R(rejected)).
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from fgrlhf.algorithms.rm_losses import (
    bradley_terry_loss,
    pairwise_accuracy,
    token_rm_loss_eq3,
    token_rm_loss_eq4,
)
from fgrlhf.config import ModelConfig
from fgrlhf.reward.data import PairExample, collate_pairs, encode_pairs
from fgrlhf.workers.packing import at_response

RMLoss = Literal["eq3", "eq4", "bt"]
LOSSES_BY_KIND = {"token": ("eq3", "eq4"), "sequence": ("bt",)}


class RewardModelTask:
    """Picklable: holds configs only; the tokenizer is loaded lazily on whichever process needs it."""

    def __init__(
        self,
        kind: Literal["token", "sequence"],
        loss: RMLoss,
        model: ModelConfig,
        max_prompt_tokens: int,
        max_response_tokens: int,
        from_edits: bool,
    ):
        if loss not in LOSSES_BY_KIND[kind]:
            raise ValueError(f"a {kind} reward model trains with loss {' or '.join(LOSSES_BY_KIND[kind])}, not {loss}")
        self.kind, self.loss_name, self.model_cfg = kind, loss, model
        self.max_prompt_tokens, self.max_response_tokens = max_prompt_tokens, max_response_tokens
        self.from_edits = from_edits
        self._tokenizer = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_tokenizer": None}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from fgrlhf.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.model_cfg.name)
        return self._tokenizer

    # --- SupervisedTask ---------------------------------------------------------------------------------
    def prepare(self, records: list[dict]) -> list[PairExample]:
        return encode_pairs(
            records,
            self.tokenizer,
            self.model_cfg.prompt_format,
            self.max_prompt_tokens,
            self.max_response_tokens,
            with_edit_masks=self.from_edits,
        )

    def build_model(self) -> torch.nn.Module:
        from fgrlhf.reward.model import build_reward_model

        return build_reward_model(
            self.kind,
            self.model_cfg,
            {
                "loss": self.loss_name,
                "max_prompt_tokens": self.max_prompt_tokens,
                "max_response_tokens": self.max_response_tokens,
            },
        )

    def collate(self, examples: list[PairExample]) -> dict[str, torch.Tensor]:
        return collate_pairs(examples, self.tokenizer.pad_token_id)

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        token = at_response(scores, batch["response_index"]).float()
        mask = batch["response_mask"]
        half = token.size(0) // 2
        # The engine wraps the module; the reading rule (mean r_t or EOS score) is the module's.
        module = getattr(model, "module", model)
        sequence = module.sequence_scores(token, mask)
        chosen, rejected = slice(0, half), slice(half, None)
        if self.loss_name == "eq4":
            changed = batch["changed"]
            loss = token_rm_loss_eq4(
                token[chosen], mask[chosen], changed[chosen], token[rejected], mask[rejected], changed[rejected]
            )
        elif self.loss_name == "eq3":
            loss = token_rm_loss_eq3(token[chosen], mask[chosen], token[rejected], mask[rejected])
        else:
            loss = bradley_terry_loss(sequence[chosen], sequence[rejected])
        detached = sequence.detach()
        return loss, {
            "accuracy": float(pairwise_accuracy(detached[chosen], detached[rejected])),
            "margin": float((detached[chosen] - detached[rejected]).mean()),
        }

    def save_pretrained(self, model: Any, directory: str) -> None:
        model.save_pretrained(directory, self.tokenizer)
