"""Reward scoring: a token RM gives r_t for every response token, a sequence RM one R per response.

A token RM's reward for token t is its head at the position of token t itself; its sequence score is the
paper's R(τ) = (1/T) Σ_t r_t (used by the ``fine_grained_sequence`` mode). A sequence RM's head is read at
the last real response token (EOS).
"""

from __future__ import annotations

import torch

from fgrlhf.workers.packing import at_response, pack


class RewardWorker:
    def __init__(self, model_dir: str, pad_id: int, micro_batch_size: int):
        from fgrlhf.reward.model import TokenRewardModel, load_reward_model
        from fgrlhf.runtime.distributed import bind_device

        torch.set_num_threads(1)
        self.device = bind_device()  # the GPU Ray assigned, else CPU (even where every GPU is visible)
        self.model = load_reward_model(model_dir).to(self.device).eval().requires_grad_(False)
        self.is_token_rm = isinstance(self.model, TokenRewardModel)
        self.pad_id = pad_id
        self.micro_batch_size = micro_batch_size

    def ready(self) -> bool:
        return True

    def kind(self) -> str:
        return "token" if self.is_token_rm else "sequence"

    @torch.no_grad()
    def score(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> dict[str, torch.Tensor]:
        """``{"sequence": [B]}`` and, for a token RM, ``{"token": [B, T]}`` (zero on padding)."""
        from fgrlhf.reward.model import per_position_scores

        width = max(len(r) for r in response_ids)
        token = torch.zeros(len(prompt_ids), width)
        sequence = torch.zeros(len(prompt_ids))
        for start in range(0, len(prompt_ids), self.micro_batch_size):
            rows = slice(start, start + self.micro_batch_size)
            batch = pack(prompt_ids[rows], response_ids[rows], self.pad_id).to(self.device)
            scores = per_position_scores(self.model, batch.input_ids, batch.attention_mask).float()
            per_token = at_response(scores, batch.response_index) * batch.response_mask
            lengths = batch.response_mask.sum(1)
            token[rows, : per_token.size(1)] = per_token.cpu()
            if self.is_token_rm:
                sequence[rows] = (per_token.sum(1) / lengths).cpu()
            else:
                last = batch.response_index.gather(1, (lengths.long() - 1).unsqueeze(1)).squeeze(1)
                sequence[rows] = scores.gather(1, last.unsqueeze(1)).squeeze(1).cpu()
        result = {"sequence": sequence}
        if self.is_token_rm:
            result["token"] = token
        return result
