"""Batch layouts shared by the scoring and learner workers, and how a batch is cut into micro-batches.

Two row layouts give the same ``[B, T]`` per-token outputs:

* **padded** (:func:`pack`): one right-padded row per sequence, so every row's positions are 0..n-1 as in
  training. Response token t of row i sits at input index ``len(prompt_i) + t``.
* **packed** (:func:`pack_row`): every sequence concatenated into one row with ``position_ids`` restarting at 0
  per sequence and no ``attention_mask``. transformers then builds a block-diagonal causal mask from the
  restarting positions (``masking_utils.find_packed_sequence_indices``; only without a KV cache, so callers pass
  ``use_cache=False``), and ``flash_attention_2`` runs its varlen kernels on the same positions: no padded
  position is computed. ``response_index`` is then the position in that one row.

Micro-batches (:func:`plan_micro_batches`): a fixed row count or a token budget, over rows in batch order
(``padded``) or sorted by length (``grouped`` and ``packed``, so little is padded). Per-token outputs are
gathered into the project's ``[batch, resp_len]`` layout with ``response_mask``. :func:`rank_order` spreads a
batch's tokens evenly over data-parallel ranks that each take a contiguous equal shard (:func:`split`).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch

# "auto": packed where attention is varlen (CUDA with flash_attention_2), else CPU_LAYOUT
Layout = Literal["padded", "grouped", "packed"]
LayoutSetting = Literal["auto", "padded", "grouped", "packed"]
# Measured on SmolLM2-135M shapes on the 2-core CPU (benchmarks/packing_layouts.py, BENCHMARKS.md): with sdpa
# and a dense block-diagonal mask a packed row costs (Σ L)² attention, so length-grouped padded rows win there.
CPU_LAYOUT: Layout = "grouped"


@dataclass
class Packed:
    """The padded layout."""

    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]
    response_ids: torch.Tensor  # [B, T], pad where response_mask == 0
    response_index: torch.Tensor  # [B, T], input index of response token t (clamped on padding)
    response_mask: torch.Tensor  # [B, T] float

    def to(self, device: torch.device) -> Packed:
        return Packed(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword inputs."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


@dataclass
class PackedRow:
    """The packed layout: no attention mask (transformers derives it from ``position_ids``)."""

    input_ids: torch.Tensor  # [1, N], N = the sequences' total length
    position_ids: torch.Tensor  # [1, N], restarting at 0 per sequence
    response_ids: torch.Tensor  # [B, T], pad where response_mask == 0
    response_index: torch.Tensor  # [B, T], index in the row of response token t (its last token on padding)
    response_mask: torch.Tensor  # [B, T] float

    def to(self, device: torch.device) -> PackedRow:
        return PackedRow(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))

    def inputs(self) -> dict[str, torch.Tensor]:
        """The model's keyword inputs (a causal LM also needs ``use_cache=False`` for the packed mask)."""
        return {"input_ids": self.input_ids, "position_ids": self.position_ids}


Batch = Packed | PackedRow


def _check(prompt_ids: list[list[int]], response_ids: list[list[int]]) -> None:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if any(not r for r in response_ids):
        raise ValueError("every response needs at least one token (an EOS counts)")


def pack(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> Packed:
    """The padded layout: one right-padded row per sequence."""
    _check(prompt_ids, response_ids)
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


def pack_row(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> PackedRow:
    """The packed layout: all sequences in one row, positions restarting per sequence, nothing padded."""
    _check(prompt_ids, response_ids)
    if any(not p for p in prompt_ids):
        # shift=-1 at the first response token would read the previous sequence's last position
        raise ValueError("the packed layout needs at least one prompt token per sequence")
    resp_len = max(len(r) for r in response_ids)
    tokens: list[int] = []
    positions: list[int] = []
    responses = torch.full((len(prompt_ids), resp_len), pad_id, dtype=torch.long)
    index = torch.zeros((len(prompt_ids), resp_len), dtype=torch.long)
    mask = torch.zeros((len(prompt_ids), resp_len))
    for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        start, n = len(tokens), len(p) + len(r)
        tokens += p + r
        positions += range(n)
        responses[row, : len(r)] = torch.tensor(r)
        # padding past the response points at the sequence's own last token: in bounds, masked
        index[row] = torch.arange(start + len(p), start + len(p) + resp_len).clamp(max=start + n - 1)
        mask[row, : len(r)] = 1.0
    return PackedRow(torch.tensor([tokens]), torch.tensor([positions]), responses, index, mask)


def build(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, layout: Layout) -> Batch:
    """One micro-batch in ``layout`` (``grouped`` rows are padded; grouping is in :func:`plan_micro_batches`)."""
    if layout == "packed":
        return pack_row(prompt_ids, response_ids, pad_id)
    return pack(prompt_ids, response_ids, pad_id)


def at_response(per_position: torch.Tensor, index: torch.Tensor, shift: int = 0) -> torch.Tensor:
    """Gather ``per_position[b, index[b, t] + shift]`` (``[R, L]`` or ``[R, L, D]``) into ``[B, T(, D)]``; a packed
    batch's one row (R = 1) is read by every sequence.

    ``shift=-1`` picks the position *before* token t: where the LM's logits predict t and where the
    critic sees state s_t (prompt + tokens before t).
    """
    idx = (index + shift).clamp(min=0)
    if per_position.size(0) != index.size(0):
        if per_position.size(0) != 1:
            raise ValueError(f"{per_position.size(0)} rows of outputs for {index.size(0)} sequences")
        per_position = per_position.expand(index.size(0), *per_position.shape[1:])  # a view: no copy
    if per_position.dim() == 3:
        idx = idx.unsqueeze(-1).expand(-1, -1, per_position.size(-1))
    return per_position.gather(1, idx)


def lm_response_logits(model, response_index: torch.Tensor, **inputs: torch.Tensor | bool) -> torch.Tensor:
    """``[B, T, V]`` logits of a causal LM (or its DeepSpeed engine) that predict each response token (those at
    the position before it, as ``at_response(logits, response_index, shift=-1)``), with the LM head run only at
    those positions (HF ``logits_to_keep``; one set for all rows of a padded batch): prompt positions skip its
    hidden × vocab matmul and their ``[tokens, vocab]`` logits, forward and backward. For SmolLM2 the head is a
    fifth of a token's arithmetic, and most of a PPO batch's tokens are prompt."""
    before = (response_index - 1).clamp(min=0)
    keep = before.unique()  # sorted
    logits = model(**inputs, logits_to_keep=keep).logits
    if logits.size(1) != keep.numel():
        raise TypeError(
            f"{type(model).__name__} returned logits at {logits.size(1)} positions for "
            f"logits_to_keep of {keep.numel()}: it must accept transformers' logits_to_keep"
        )
    return at_response(logits, torch.searchsorted(keep, before))


# --- micro-batches ----------------------------------------------------------------------------------------------
def resolve_layout(setting: LayoutSetting, model: torch.nn.Module, device: torch.device) -> Layout:
    """``auto``: packed where attention is varlen (CUDA and ``flash_attention_2``), else :data:`CPU_LAYOUT`
    (a dense block-diagonal mask makes packed attention cost (Σ L)² instead of Σ L²)."""
    if setting != "auto":
        return setting
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    if device.type == "cuda" and attention == "flash_attention_2":
        return "packed"
    return CPU_LAYOUT


def micro_batch_tokens(lengths: list[int], layout: Layout) -> int:
    """Tokens one forward processes for rows of these lengths: padded to the longest, or packed."""
    return sum(lengths) if layout == "packed" else len(lengths) * max(lengths, default=0)


def plan_micro_batches(
    lengths: list[int], layout: Layout, micro_batch_size: int, max_tokens: int | None = None
) -> list[list[int]]:
    """Row indices (into ``lengths``, each a sequence's prompt + response length) of each micro-batch.

    ``padded`` keeps batch order; ``grouped`` and ``packed`` sort by length first, as does a token budget.
    Without ``max_tokens``: ``micro_batch_size`` rows each. With it: consecutive sorted rows while
    :func:`micro_batch_tokens` stays within the budget (a longer single row gets a micro-batch of its own)."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size {micro_batch_size}: must be >= 1")
    order = list(range(len(lengths)))
    if layout != "padded" or max_tokens is not None:
        order.sort(key=lambda i: lengths[i])
    if max_tokens is None:
        return [order[i : i + micro_batch_size] for i in range(0, len(order), micro_batch_size)]
    groups: list[list[int]] = []
    for i in order:
        if groups and micro_batch_tokens([lengths[j] for j in (*groups[-1], i)], layout) <= max_tokens:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def split_to_count(groups: list[list[int]], lengths: list[int], count: int, layout: Layout) -> list[list[int]]:
    """``groups`` cut further until there are ``count``, halving the costliest splittable one each time, so that
    every data-parallel rank runs as many forwards (ZeRO-2/3 reduce or gather at each one, collectively)."""
    groups = [list(g) for g in groups]
    if count > sum(len(g) for g in groups):
        raise ValueError(f"cannot cut {sum(len(g) for g in groups)} rows into {count} micro-batches")
    while len(groups) < count:
        k = max(
            (k for k, g in enumerate(groups) if len(g) > 1),
            key=lambda k: micro_batch_tokens([lengths[i] for i in groups[k]], layout),
        )
        group = groups.pop(k)
        groups[k:k] = [group[: len(group) // 2], group[len(group) // 2 :]]
    return groups


def micro_batches(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, layout: Layout, plan: list[list[int]]
) -> Iterator[tuple[list[int], Batch]]:
    """Each planned micro-batch's rows and its batch (on CPU)."""
    for rows in plan:
        yield rows, build([prompt_ids[i] for i in rows], [response_ids[i] for i in rows], pad_id, layout)


def minibatch_schedule(size: int, minibatch_size: int, epochs: int, seed: int, rank: int) -> list[list[int]]:
    """The rows of a learner rank's shard (``0..size-1``) in each of its optimizer steps: the shard reshuffled
    every epoch by a generator seeded from ``seed`` and ``rank``, cut into minibatches of ``minibatch_size``."""
    order = list(range(size))
    rng = random.Random(seed * 1009 + rank)
    steps = []
    for _ in range(epochs):
        rng.shuffle(order)
        steps += [order[start : start + minibatch_size] for start in range(0, size, minibatch_size)]
    return steps


def lengths_of(prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[int]:
    return [len(p) + len(r) for p, r in zip(prompt_ids, response_ids, strict=True)]


@torch.no_grad()
def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    micro_batch_size: int,
    layout: LayoutSetting = "padded",
    max_tokens: int | None = None,
) -> torch.Tensor:
    """``[B, T]`` teacher-forced log p(a_t | s_t) of the response tokens under a causal LM (the reference
    model, or the rollout model's own weights for the behaviour policy), 0 on padding, T = longest response,
    on CPU. The learners compute their log-probs with the same layouts and arithmetic."""
    from fgrlhf.algorithms import ppo_core

    device = next(model.parameters()).device
    chosen = resolve_layout(layout, model, device)
    plan = plan_micro_batches(lengths_of(prompt_ids, response_ids), chosen, micro_batch_size, max_tokens)
    out = torch.zeros(len(prompt_ids), max(len(r) for r in response_ids))
    for rows, batch in micro_batches(prompt_ids, response_ids, pad_id, chosen, plan):
        batch = batch.to(device)
        logits = lm_response_logits(model, batch.response_index, **batch.inputs(), use_cache=False).float()
        logprobs = ppo_core.logprobs_from_logits(logits, batch.response_ids) * batch.response_mask
        out[rows, : logprobs.size(1)] = logprobs.cpu()
    return out


# --- data-parallel shards -------------------------------------------------------------------------------------
def split(items: list, parts: int) -> list[list]:
    """Split into ``parts`` equal consecutive shards (the caller guarantees divisibility)."""
    if len(items) % parts:
        raise ValueError(f"{len(items)} items cannot be split into {parts} equal shards")
    size = len(items) // parts
    return [items[i * size : (i + 1) * size] for i in range(parts)]


def balanced_order(lengths: list[int], parts: int) -> list[int]:
    """A permutation of the rows such that its ``parts`` contiguous equal shards (:func:`split`) have near-equal
    token totals: longest first, each row to the shard with the smallest total that still has room (sorted
    greedy with equal cardinality). Within a shard rows keep batch order, so ``parts=1`` is the identity."""
    if parts < 1 or len(lengths) % parts:
        raise ValueError(f"{len(lengths)} rows cannot be split into {parts} equal shards")
    size = len(lengths) // parts
    shards: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        k = min((k for k in range(parts) if len(shards[k]) < size), key=lambda k: (totals[k], k))
        shards[k].append(i)
        totals[k] += lengths[i]
    return [i for shard in shards for i in sorted(shard)]


def inverse_order(order: list[int]) -> list[int]:
    """The permutation that undoes ``order``: with ``y = [x[i] for i in order]``, ``[y[k] for k in inverse]`` is
    ``x`` (per-row results of permuted rows come back to batch order)."""
    inverse = [0] * len(order)
    for position, i in enumerate(order):
        inverse[i] = position
    return inverse


def rank_order(lengths: list[int], parts: int, balance: bool) -> list[int]:
    """The order in which a group of ``parts`` data-parallel ranks takes a batch's rows (of ``lengths`` tokens),
    rank r the r-th contiguous equal shard: :func:`balanced_order` under ``balance`` (a learner's
    ``balance_ranks``), so no rank waits for another, else batch order."""
    return balanced_order(lengths, parts) if balance else list(range(len(lengths)))
