"""Reward-model examples from preference data, and their collation into tensors.

Two sources, told apart by their fields:
- edit records of ``fgrlhf edit`` (prompt, original, edited, status): only ``status == "edited"`` ones;
  chosen = edited, rejected = original, and each side's U1 mask (changed tokens) from
  :func:`~fgrlhf.algorithms.token_diff.align_tokens` over the response token ids (EOS included), which is
  what Eq. 4 needs;
- preference pairs in any schema :mod:`fgrlhf.data.schemas` recognises (TRL, AlpacaFarm, conversational) or
  a field map renames: no edit masks (Eq. 3 or Bradley–Terry only).

Layout (the project's response layout, :mod:`fgrlhf.workers.packing`): one forward covers a micro-batch's
chosen rows ``[0, B)`` and rejected rows ``[B, 2B)``. ``input_ids``/``attention_mask`` are right-padded
``[2B, L]``; ``response_index`` ``[2B, T]`` gives the input position of response token t, and
``response_mask`` ``[2B, T]`` marks real response tokens (EOS included; prompt and padding excluded);
``changed`` ``[2B, T]`` (edit data only) marks U1 in the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from fgrlhf.algorithms.token_diff import align_tokens
from fgrlhf.data.loading import DataError, first_record, is_hub_id, load_edit_records, load_pairs, resolve_data_path
from fgrlhf.data.schemas import render_prompt
from fgrlhf.tokenization import encode_example
from fgrlhf.workers.packing import pack


@dataclass(frozen=True)
class PairExample:
    """One encoded preference pair; the changed masks are set for edit records only."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    chosen_changed: list[bool] | None = None
    rejected_changed: list[bool] | None = None


def is_edit_file(path: str | Path) -> bool:
    """Whether ``path`` holds ``fgrlhf edit`` records (judged by its first record's fields)."""
    if not is_hub_id(path) and not resolve_data_path(path).exists():
        raise DataError(f"{path}: no such file or directory")
    first = first_record(path)
    return isinstance(first, dict) and "edited" in first and "original" in first


def load_preference_records(path: str | Path, field_map: dict[str, str] | None = None) -> tuple[list[dict], bool]:
    """``(records, from_edits)``: records with prompt/chosen/rejected (+ input, prompt_messages), from either
    source; ``field_map`` (``--field-map``) renames the fields of pairs in another schema."""
    if not is_edit_file(path):
        return load_pairs(path, field_map=field_map), False
    edits = load_edit_records(path)
    if not edits:
        raise DataError(f"{path}: no edit record has status 'edited'")
    return [{**r, "chosen": r["edited"], "rejected": r["original"]} for r in edits], True


def encode_pairs(
    records: list[dict],
    tokenizer: PreTrainedTokenizerBase,
    prompt_format: Literal["chat", "alpaca"],
    max_prompt_tokens: int,
    max_response_tokens: int,
    with_edit_masks: bool,
) -> list[PairExample]:
    """Tokenize pairs (prompt formatted as at generation time); U1 masks when ``with_edit_masks``."""
    examples = []
    for record in records:
        prompt = render_prompt(tokenizer, record, prompt_format)
        chosen = encode_example(tokenizer, prompt, record["chosen"], max_prompt_tokens, max_response_tokens)
        rejected = encode_example(tokenizer, prompt, record["rejected"], max_prompt_tokens, max_response_tokens)
        masks: tuple = (None, None)
        if with_edit_masks:
            # rejected = original, chosen = edited: the edit script runs original -> edited.
            alignment = align_tokens(rejected.response_ids, chosen.response_ids)
            masks = (list(alignment.edited_changed), list(alignment.original_changed))
        examples.append(PairExample(chosen.prompt_ids, chosen.response_ids, rejected.response_ids, *masks))
    return examples


def collate_pairs(examples: list[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Chosen rows then rejected rows, in the layout of the module docstring."""
    prompts = [e.prompt_ids for e in examples] * 2
    responses = [e.chosen_ids for e in examples] + [e.rejected_ids for e in examples]
    packed = pack(prompts, responses, pad_id)
    batch = {
        "input_ids": packed.input_ids,
        "attention_mask": packed.attention_mask,
        "response_index": packed.response_index,
        "response_mask": packed.response_mask,
    }
    masks = [e.chosen_changed for e in examples] + [e.rejected_changed for e in examples]
    rows = [mask for mask in masks if mask is not None]
    if len(rows) == len(masks):
        changed = torch.zeros_like(packed.response_mask)
        for row, mask in enumerate(rows):
            changed[row, : len(mask)] = torch.tensor(mask, dtype=changed.dtype)
        batch["changed"] = changed
    return batch
