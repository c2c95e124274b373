"""Reference policy: the frozen initial policy's log-probs of the sampled response tokens (for the KL term)."""

from __future__ import annotations

import torch

from fgrlhf.config import ModelConfig
from fgrlhf.workers.packing import LayoutSetting, response_logprobs


class ReferenceWorker:
    def __init__(self, model_cfg: ModelConfig, micro_batch_size: int, layout: LayoutSetting = "auto"):
        """``layout``: the micro-batch layout (:mod:`fgrlhf.workers.packing`), ``auto`` for this device."""
        from fgrlhf.models import load_causal_lm, load_tokenizer
        from fgrlhf.runtime.distributed import bind_device

        torch.set_num_threads(1)
        self.device = bind_device()  # the GPU Ray assigned, else CPU (even where every GPU is visible)
        tokenizer = load_tokenizer(model_cfg.name)
        self.pad_id = tokenizer.pad_token_id
        # transformers types .to as an unbound Module.to
        model = load_causal_lm(model_cfg, tokenizer).to(self.device)  # type: ignore[arg-type]
        self.model = model.eval().requires_grad_(False)
        self.micro_batch_size, self.layout = micro_batch_size, layout
        self.model_cfg = model_cfg

    def ready(self) -> bool:
        return True

    def device_stats(self) -> dict[str, float]:
        """This actor's GPU memory and utilisation (:func:`fgrlhf.runtime.device_stats.device_stats`)."""
        from fgrlhf.runtime.device_stats import device_stats

        return device_stats()

    def logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        """``[B, T]`` log π_ref(a_t | s_t), zero on padding, T = longest response."""
        from fgrlhf.models import autocast

        with autocast(self.model_cfg, self.device):
            return response_logprobs(
                self.model, prompt_ids, response_ids, self.pad_id, self.micro_batch_size, self.layout
            )
