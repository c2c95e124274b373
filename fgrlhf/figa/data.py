"""FIGA's training pairs: initial responses, their revisions, and positive/negative token masks.

The pairs are ``{prompt, original, edited}`` records of an ``fgrlhf edit`` output file (only those with
``status == "edited"``): the initial responses of the model being aligned, revised by an editor.

Each pair is tokenized like every trainer does (:func:`fgrlhf.tokenization.encode_example`: response ids
plus EOS; no EOS for a record marked ``truncated``, a rollout cut by the generation limit) and aligned by the
token edit script original → revised:
positive = inserted/substituted tokens of the revised response plus its EOS,
negative = deleted/substituted tokens of the original (its EOS never: ending is not what the edit removed).
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
from pydantic import Field
from transformers import PreTrainedTokenizerBase

from fgrlhf.algorithms.token_diff import align_tokens
from fgrlhf.config import StrictModel
from fgrlhf.data.loading import DataError
from fgrlhf.tokenization import encode_prompt, encode_response, format_prompt
from fgrlhf.workers.packing import pack

log = logging.getLogger(__name__)


class FigaDataConfig(StrictModel):
    edits_path: str = Field(description="an `fgrlhf edit` output file: prompt, original, edited, status")
    max_prompt_tokens: int = Field(256, ge=1)
    max_response_tokens: int = Field(512, ge=2)
    eval_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="pairs whose prompt is in this hash split are held out (eval loss)"
    )
    limit: int | None = Field(None, ge=1, description="first N edited pairs")


def figa_masks(original_ids: list[int], revised_ids: list[int], eos_id: int) -> tuple[list[bool], list[bool]]:
    """``(positive mask over revised_ids, negative mask over original_ids)`` from the token edit script."""
    alignment = align_tokens(original_ids, revised_ids)
    positive = list(alignment.edited_changed)
    negative = list(alignment.original_changed)
    if revised_ids and revised_ids[-1] == eos_id:
        positive[-1] = True
    if original_ids and original_ids[-1] == eos_id:
        negative[-1] = False
    return positive, negative


def build_example(
    tokenizer: PreTrainedTokenizerBase,
    record: dict,
    prompt_format: Literal["chat", "alpaca"],
    max_prompt_tokens: int,
    max_response_tokens: int,
) -> dict:
    """Token ids and masks of one ``{prompt, original, edited}`` record (plain lists: cheap to ship to actors)."""
    prompt = format_prompt(tokenizer, record["prompt"], prompt_format, record.get("input", ""))
    original_ids = encode_response(tokenizer, record["original"], max_response_tokens)
    revised_ids = encode_response(tokenizer, record["edited"], max_response_tokens)
    if record.get("truncated"):
        # A rollout cut by the generation limit never ended: an EOS there would be trained (positive) as
        # "stop mid-sentence", which is not what the editor revised.
        eos = tokenizer.eos_token_id
        original_ids, revised_ids = (ids[:-1] if ids[-1:] == [eos] else ids for ids in (original_ids, revised_ids))
    positive, negative = figa_masks(original_ids, revised_ids, tokenizer.eos_token_id)
    return {
        "prompt_ids": encode_prompt(tokenizer, prompt, max_prompt_tokens),
        "revised_ids": revised_ids,
        "positive_mask": positive,
        "original_ids": original_ids,
        "negative_mask": negative,
    }


def build_examples(
    tokenizer: PreTrainedTokenizerBase,
    records: list[dict],
    prompt_format: Literal["chat", "alpaca"],
    max_prompt_tokens: int,
    max_response_tokens: int,
) -> list[dict]:
    """Examples of the records whose revision has a positive token; a token-identical revision, or one cut
    by ``max_response_tokens`` before its first change and its EOS, has nothing to learn from."""
    examples = [build_example(tokenizer, r, prompt_format, max_prompt_tokens, max_response_tokens) for r in records]
    kept = [e for e in examples if any(e["positive_mask"]) and e["original_ids"] != e["revised_ids"]]
    if len(kept) < len(examples):
        log.info("skipped %d of %d FIGA pairs without a positive token", len(examples) - len(kept), len(examples))
    if not kept:
        raise DataError(f"none of {len(records)} FIGA pairs has a revision that differs from its original")
    return kept


def split_records(records: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` by the envs' prompt hash, so eval pairs share the gold evaluation's held-out prompts."""
    from fgrlhf.envs import in_eval_split

    if not eval_fraction:
        return records, []
    held = [in_eval_split(r["prompt"], eval_fraction) for r in records]
    return [r for r, h in zip(records, held) if not h], [r for r, h in zip(records, held) if h]


def collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Both sides packed like the PPO workers (:func:`fgrlhf.workers.packing.pack`), prefixed ``revised_`` /
    ``original_``, plus ``positive_mask`` / ``negative_mask`` in the ``[B, T]`` response layout."""
    prompts = [e["prompt_ids"] for e in examples]
    batch: dict[str, torch.Tensor] = {}
    for side, ids_key, mask_key in (
        ("revised", "revised_ids", "positive_mask"),
        ("original", "original_ids", "negative_mask"),
    ):
        packed = pack(prompts, [e[ids_key] for e in examples], pad_id)
        for name in packed.__dataclass_fields__:
            batch[f"{side}_{name}"] = getattr(packed, name)
        mask = torch.zeros_like(packed.response_mask)
        for row, example in enumerate(examples):
            mask[row, : len(example[mask_key])] = torch.tensor(example[mask_key], dtype=mask.dtype)
        batch[mask_key] = mask
    return batch


def load_pairs(cfg: FigaDataConfig) -> list[dict]:
    """The ``status == "edited"`` records of ``cfg.edits_path`` (first ``cfg.limit``)."""
    from fgrlhf.data.loading import load_edit_records

    records = load_edit_records(cfg.edits_path)
    if not records:
        raise DataError(f"{cfg.edits_path}: no record has status 'edited'")
    return records[: cfg.limit] if cfg.limit else records
