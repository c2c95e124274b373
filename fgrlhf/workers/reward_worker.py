"""Reward scoring: a token RM gives r_t for every response token, a sequence RM one R per response.

A token RM's reward for token t is its head at the position of token t itself; its sequence score is the
paper's R(τ) = (1/T) Σ_t r_t (used by the ``fine_grained_sequence`` mode). A sequence RM's head is read at
the last real response token (EOS).
"""

from __future__ import annotations

import torch

from fgrlhf.config import ModelConfig
from fgrlhf.workers.packing import (
    LayoutSetting,
    at_response,
    lengths_of,
    micro_batches,
    plan_micro_batches,
    resolve_layout,
)


class RewardWorker:
    def __init__(
        self,
        model_dir: str,
        pad_id: int,
        micro_batch_size: int,
        compute: ModelConfig | None = None,
        layout: LayoutSetting = "auto",
    ):
        """``compute``: the run's ``attn_implementation`` and ``autocast`` (the policy's ModelConfig; the RM's own
        architecture and weights come from ``model_dir``). ``layout``: the micro-batch layout
        (:mod:`fgrlhf.workers.packing`), ``auto`` for this device."""
        from fgrlhf.reward.model import TokenRewardModel, load_reward_model
        from fgrlhf.runtime.distributed import bind_device

        torch.set_num_threads(1)
        self.device = bind_device()  # the GPU Ray assigned, else CPU (even where every GPU is visible)
        self.compute = compute or ModelConfig()
        model = load_reward_model(model_dir, attn_implementation=self.compute.attn_implementation)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.is_token_rm = isinstance(self.model, TokenRewardModel)
        self.pad_id = pad_id
        self.micro_batch_size = micro_batch_size
        self.layout = resolve_layout(layout, self.model, self.device)

    def ready(self) -> bool:
        return True

    def device_stats(self) -> dict[str, float]:
        """This actor's GPU memory and utilisation (:func:`fgrlhf.runtime.device_stats.device_stats`)."""
        from fgrlhf.runtime.device_stats import device_stats

        return device_stats()

    def kind(self) -> str:
        return "token" if self.is_token_rm else "sequence"

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """``{"sequence": [B]}`` and, for a token RM, ``{"token": [B, T]}`` (zero on padding)."""
        from fgrlhf.models import autocast

        with autocast(self.compute, self.device):
            return self._score(prompt_ids, response_ids)

    def _score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        from fgrlhf.reward.model import per_position_scores

        width = max(len(r) for r in response_ids)
        token = torch.zeros(len(prompt_ids), width)
        sequence = torch.zeros(len(prompt_ids))
        plan = plan_micro_batches(lengths_of(prompt_ids, response_ids), self.layout, self.micro_batch_size)
        for rows, batch in micro_batches(prompt_ids, response_ids, self.pad_id, self.layout, plan):
            batch = batch.to(self.device)
            scores = per_position_scores(self.model, **batch.inputs()).float()
            at_tokens = at_response(scores, batch.response_index)
            per_token = at_tokens * batch.response_mask
            lengths = batch.response_mask.sum(1)
            token[rows, : per_token.size(1)] = per_token.cpu()
            if self.is_token_rm:
                sequence[rows] = (per_token.sum(1) / lengths).cpu()
            else:  # the head at the last real response token
                sequence[rows] = at_tokens.gather(1, (lengths.long() - 1).unsqueeze(1)).squeeze(1).cpu()
        result = {"sequence": sequence}
        if self.is_token_rm:
            result["token"] = token
        return result
