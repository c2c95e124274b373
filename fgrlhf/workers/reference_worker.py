"""Reference policy: the frozen initial policy's log-probs of the sampled response tokens (for the KL term)."""

from __future__ import annotations

import torch

from fgrlhf.algorithms import ppo_core
from fgrlhf.config import ModelConfig
from fgrlhf.workers.packing import at_response, pack


class ReferenceWorker:
    def __init__(self, model_cfg: ModelConfig, micro_batch_size: int):
        from fgrlhf.models import load_causal_lm, load_tokenizer

        torch.set_num_threads(1)
        tokenizer = load_tokenizer(model_cfg.name)
        self.pad_id = tokenizer.pad_token_id
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = load_causal_lm(model_cfg, tokenizer).to(self.device).eval().requires_grad_(False)
        self.micro_batch_size = micro_batch_size

    def ready(self) -> bool:
        return True

    @torch.no_grad()
    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        """``[B, T]`` log π_ref(a_t | s_t), zero on padding, T = longest response."""
        width = max(len(r) for r in response_ids)
        out = torch.zeros(len(prompt_ids), width)
        for start in range(0, len(prompt_ids), self.micro_batch_size):
            rows = slice(start, start + self.micro_batch_size)
            batch = pack(prompt_ids[rows], response_ids[rows], self.pad_id).to(self.device)
            logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logits = at_response(logits, batch.response_index, shift=-1).float()
            logprobs = ppo_core.logprobs_from_logits(logits, batch.response_ids) * batch.response_mask
            out[rows, : logprobs.size(1)] = logprobs.cpu()
        return out
