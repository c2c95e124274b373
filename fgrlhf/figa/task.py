"""FIGA as a task of the supervised trainer (:mod:`fgrlhf.trainers.supervised`).

The task owns what is FIGA-specific: which model to build, how pairs become tensors, and the loss
(:func:`fgrlhf.algorithms.figa_loss.figa_loss`). Plain SFT on the revised responses is this task with
α = γ = 1, β = 0 (a config, not another task): every revised token gets weight 1, the original is unused.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from fgrlhf.config import ModelConfig, StrictModel
from fgrlhf.workers.packing import lm_response_logits


class FigaLossConfig(StrictModel):
    """Weights of the official code: +α positive revised tokens, −β confident negative original tokens,
    γ unchanged revised tokens; a negative token counts only where CE_t ≤ confidence_threshold."""

    alpha: float = Field(1.0, ge=0.0)
    beta: float = Field(0.5, ge=0.0)
    gamma: float = Field(0.0, ge=0.0)
    confidence_threshold: float = Field(0.6, gt=0.0)


def response_ce(model, batch: dict[str, torch.Tensor], side: str) -> torch.Tensor:
    """CE_t of every response token of ``side`` (``revised``/``original``), ``[B, T]`` (padding included)."""
    from fgrlhf.algorithms.figa_loss import token_cross_entropy

    logits = lm_response_logits(
        model,
        batch[f"{side}_response_index"],
        input_ids=batch[f"{side}_input_ids"],
        attention_mask=batch[f"{side}_attention_mask"],
    )
    return token_cross_entropy(logits, batch[f"{side}_response_ids"])


class FigaTask:
    """Picklable: holds configs only; the model and tokenizer are built where they are used."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        loss_cfg: FigaLossConfig,
        pad_id: int,
        max_prompt_tokens: int = 256,
        max_response_tokens: int = 512,
    ):
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg
        self.pad_id = pad_id
        self.max_prompt_tokens = max_prompt_tokens
        self.max_response_tokens = max_response_tokens

    def prepare(self, records: list[dict]) -> list[dict]:
        """``{prompt, original, edited}`` records -> token ids and masks (driver side, once)."""
        from fgrlhf.figa.data import build_examples
        from fgrlhf.models import load_tokenizer

        return build_examples(
            load_tokenizer(self.model_cfg.name),
            records,
            self.model_cfg.prompt_format,
            self.max_prompt_tokens,
            self.max_response_tokens,
        )

    def build_model(self):
        from fgrlhf.models import load_causal_lm

        return load_causal_lm(self.model_cfg)

    def collate(self, records: list[dict]) -> dict[str, torch.Tensor]:
        from fgrlhf.figa.data import collate

        return collate(records, self.pad_id)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """FIGA's loss of one micro-batch and per-example-mean metrics.

        The loss is normalised by the micro-batch's weighted-token count, as the official code (HF Trainer)
        does, not by its example count: gradient accumulation then averages per-micro-batch token means.
        """
        from fgrlhf.algorithms.figa_loss import figa_loss, figa_token_weights

        cfg = self.loss_cfg
        ce_revised = response_ce(model, batch, "revised")
        if cfg.beta > 0:
            ce_original = response_ce(model, batch, "original")
        else:  # SFT: the original side has weight 0 everywhere, so skip its forward pass
            ce_original = torch.zeros_like(batch["original_response_mask"], dtype=ce_revised.dtype)
        args = (
            ce_revised,
            batch["positive_mask"],
            batch["revised_response_mask"],
            ce_original,
            batch["negative_mask"],
            batch["original_response_mask"],
        )
        weights: dict[str, Any] = {
            "alpha": cfg.alpha,
            "beta": cfg.beta,
            "gamma": cfg.gamma,
            "confidence_threshold": cfg.confidence_threshold,
        }
        loss = figa_loss(*args, **weights)
        w_revised, w_original = figa_token_weights(*args, **weights)
        ce = ce_revised.detach()
        revised_mask, positive = batch["revised_response_mask"], batch["positive_mask"]
        examples = revised_mask.size(0)
        metrics = {
            # Per-example mean CE over the revised response (exp of it: perplexity on revised tokens).
            "ce_revised": float(((ce * revised_mask).sum(1) / revised_mask.sum(1)).mean()),
            # Every example has a positive token (build_examples drops the others).
            "ce_positive": float((ce * positive).sum() / positive.sum()),
            "positive_tokens": float(positive.sum()) / examples,
            "negative_tokens": float((batch["negative_mask"] * batch["original_response_mask"]).sum()) / examples,
            "negative_confident": float((w_original != 0).sum()) / examples,
            "weighted_tokens": float((w_revised != 0).sum() + (w_original != 0).sum()) / examples,
        }
        return loss, metrics

    def save_pretrained(self, model, directory: str) -> None:
        """An HF checkpoint (causal LM + tokenizer) that ``load_causal_lm(ModelConfig(name=directory))`` reads."""
        from fgrlhf.models import load_tokenizer

        model.save_pretrained(directory, safe_serialization=True)
        load_tokenizer(self.model_cfg.name).save_pretrained(directory)
