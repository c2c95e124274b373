"""What a PPO run reads: its prompts (tokenised once), the prompts of each step, the gold of every prefix
(``oracle_token``) and the random tiny RM of smoke runs (``reward.model: tiny-token|tiny-sequence``)."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from fgrlhf.config import ModelConfig
from fgrlhf.trainers.ppo.config import PPOTrainConfig

if TYPE_CHECKING:  # torch is imported inside functions so `fgrlhf --help` stays fast
    import torch


def load_prompt_ids(cfg: PPOTrainConfig) -> tuple[list[str], list[list[int]]]:
    """The prompts' texts as the policy reads them (prompt format or chat template) and their token ids."""
    from fgrlhf.data.loading import load_prompts
    from fgrlhf.data.schemas import render_prompt
    from fgrlhf.models import load_tokenizer
    from fgrlhf.tokenization import encode_prompt

    tokenizer = load_tokenizer(cfg.policy.name)
    records = load_prompts(
        cfg.prompts.path, limit=cfg.prompts.limit, field_map=cfg.prompts.field_map, field_map_flag="prompts.field_map"
    )
    texts = [render_prompt(tokenizer, r, cfg.policy.prompt_format) for r in records]
    return texts, [encode_prompt(tokenizer, t, cfg.prompts.max_prompt_tokens) for t in texts]


def batch_indices(num_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Prompt indices of ``step`` (0-based): a fresh seeded permutation per pass over the data, so the
    order depends only on (seed, step) and a resumed run sees exactly the batches it would have."""
    start = step * batch_size
    out = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_prompts)
        order = list(range(num_prompts))
        random.Random(seed * 7919 + epoch).shuffle(order)
        out.append(order[offset])
    return out


def prefix_gold_scores(
    gold: Callable[[list[str], list[str]], list[float]], prompt_texts: list[str], responses: list[list[int]], tokenizer
) -> torch.Tensor:
    """The gold of every prefix of every response, ``[B, max_len + 1]`` (column t: the first t tokens,
    column 0 the empty response; 0 past a row's end), with one batch decode and one gold call.

    Prefixes are decoded from ids rather than by cutting the full text, because a token's text can depend
    on its neighbours (byte-level BPE, leading spaces); the decode costs O(Σ len²) tokens, small next to a
    rollout at these lengths.
    """
    import torch

    prefixes = [r[:t] for r in responses for t in range(len(r) + 1)]
    owners = [p for p, r in zip(prompt_texts, responses, strict=True) for _ in range(len(r) + 1)]
    flat = gold(owners, tokenizer.batch_decode(prefixes, skip_special_tokens=True))
    if len(flat) != len(prefixes):
        raise ValueError(f"gold_reward returned {len(flat)} scores for {len(prefixes)} prefixes")
    out = torch.zeros(len(responses), max(len(r) for r in responses) + 1)
    start = 0
    for row, r in enumerate(responses):
        out[row, : len(r) + 1] = torch.tensor(flat[start : start + len(r) + 1], dtype=out.dtype)
        start += len(r) + 1
    return out


def save_tiny_reward_model(kind: str, policy_cfg: ModelConfig, path: Path) -> None:
    """A random-init RM on the tiny policy's backbone shape (deterministic from ``policy_cfg.seed``)."""
    import torch
    from transformers import LlamaModel

    from fgrlhf.models import load_tokenizer, tiny_llama_config
    from fgrlhf.reward.model import SequenceRewardModel, TokenRewardModel

    cls = TokenRewardModel if kind == "token" else SequenceRewardModel
    with torch.random.fork_rng():
        torch.manual_seed(policy_cfg.seed + 1)
        model = cls(LlamaModel(tiny_llama_config(policy_cfg, load_tokenizer(policy_cfg.name))))
    model.save_pretrained(str(path))
