"""Batch layout shared by the scoring and learner workers: prompt + response rows, right-padded.

Right padding keeps every row's positions 0..n-1 as in training, so no worker needs ``position_ids``.
Response token t of row i sits at input index ``len(prompt_i) + t``; per-token outputs are gathered into
the project's ``[batch, resp_len]`` layout with ``response_mask``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Packed:
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_ids: torch.Tensor  # [B, T], pad where response_mask == 0
    response_index: torch.Tensor  # [B, T], input index of response token t (clamped on padding)
    response_mask: torch.Tensor  # [B, T] float

    def to(self, device: torch.device) -> Packed:
        return Packed(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> Packed:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(not r for r in response_ids):
        raise ValueError("every response needs at least one token (an EOS counts)")
    batch = len(prompt_ids)
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    resp_len = max(len(r) for r in response_ids)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    responses = torch.full((batch, resp_len), pad_id, dtype=torch.long)
    index = torch.zeros((batch, resp_len), dtype=torch.long)
    mask = torch.zeros((batch, resp_len))
    for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        n = len(p) + len(r)
        input_ids[row, :n] = torch.tensor(p + r)
        attention_mask[row, :n] = 1
        responses[row, : len(r)] = torch.tensor(r)
        index[row] = torch.arange(len(p), len(p) + resp_len).clamp(max=width - 1)
        mask[row, : len(r)] = 1.0
    return Packed(input_ids, attention_mask, responses, index, mask)


def at_response(per_position: torch.Tensor, index: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """Gather ``per_position[b, index[b, t] + shift]`` (``[B, L]`` or ``[B, L, D]``) into ``[B, T(, D)]``.

    ``shift=-1`` picks the position *before* token t: where the LM's logits predict t and where the
    critic sees state s_t (prompt + tokens before t).
    """
    idx = (index + shift).clamp(min=0)
    if per_position.dim() == 3:
        idx = idx.unsqueeze(-1).expand(-1, -1, per_position.size(-1))
    return per_position.gather(1, idx)


@torch.no_grad()
def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    micro_batch_size: int,
) -> torch.Tensor:
    """``[B, T]`` teacher-forced log p(a_t | s_t) of the response tokens under a causal LM (the reference
    model, or the rollout model's own weights for the behaviour policy), 0 on padding, T = longest response,
    on CPU. The learners compute their log-probs with the same layout and arithmetic."""
    from fgrlhf.algorithms import ppo_core

    device = next(model.parameters()).device
    out = torch.zeros(len(prompt_ids), max(len(r) for r in response_ids))
    for start in range(0, len(prompt_ids), micro_batch_size):
        rows = slice(start, start + micro_batch_size)
        batch = pack(prompt_ids[rows], response_ids[rows], pad_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        logits = at_response(logits, batch.response_index, shift=-1).float()
        logprobs = ppo_core.logprobs_from_logits(logits, batch.response_ids) * batch.response_mask
        out[rows, : logprobs.size(1)] = logprobs.cpu()
    return out


def split(items: list, parts: int) -> list[list]:
    """Split into ``parts`` equal consecutive shards (the caller guarantees divisibility)."""
    if len(items) % parts:
        raise ValueError(f"{len(items)} items cannot be split into {parts} equal shards")
    size = len(items) // parts
    return [items[i * size : (i + 1) * size] for i in range(parts)]
