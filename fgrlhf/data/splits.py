"""Splits of a data set by prompt, as AlpacaFarm's (RM pairs / PPO prompts / validation / eval).

Records sharing a prompt text always land in the same split, so a model is never selected or evaluated on
a prompt it was trained on. A prompt's place is decided by a hash of the seed and its text, not by the
order of the records: the same data in any order, or with records appended, splits the same way.
"""

from __future__ import annotations

import hashlib
import math
from itertools import combinations

from fgrlhf.data.loading import DataError


def _prompt(record: dict, index: int, key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        raise DataError(
            f"record {index}: field '{key}' must be a string to split by prompt, got {type(value).__name__}"
        )
    return value


def _rank(seed: int, prompt: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()


def split_by_prompt(
    records: list[dict], fractions: dict[str, float], seed: int, *, key: str = "prompt"
) -> dict[str, list[dict]]:
    """Split ``records`` into ``fractions``' names, each receiving that fraction of the distinct prompts
    (rounded on the cumulative count, so sizes add up); what the fractions leave (they sum to at most 1) is
    dropped. Records keep their input order within a split. A split with a positive fraction that would get
    no prompt is an error rather than an empty split downstream."""
    if not fractions:
        raise DataError("split fractions: name at least one split")
    for name, fraction in fractions.items():
        if not (isinstance(fraction, int | float) and 0 <= fraction <= 1 and math.isfinite(fraction)):
            raise DataError(f"split fractions: '{name}' is {fraction!r}; expected a number in [0, 1]")
    total = sum(fractions.values())
    if total > 1 + 1e-9:
        raise DataError(f"split fractions: they sum to {total:g}; expected at most 1")
    prompts = sorted(
        {_prompt(record, index, key) for index, record in enumerate(records)}, key=lambda p: _rank(seed, p)
    )
    place: dict[str, str] = {}
    cumulative, start = 0.0, 0
    for name, fraction in fractions.items():
        cumulative += fraction
        end = min(len(prompts), round(cumulative * len(prompts)))
        if fraction > 0 and end == start:
            raise DataError(
                f"split '{name}': fraction {fraction:g} of {len(prompts)} distinct prompts is no prompt; "
                "give it a larger fraction or more data"
            )
        place.update((prompt, name) for prompt in prompts[start:end])
        start = end
    splits: dict[str, list[dict]] = {name: [] for name in fractions}
    for record in records:
        split = place.get(record[key])
        if split is not None:
            splits[split].append(record)
    return splits


def check_disjoint(splits: dict[str, list[dict]], *, key: str = "prompt") -> None:
    """Raise :class:`DataError` if two splits share a prompt, naming both splits and one shared prompt."""
    prompts = {
        name: {_prompt(record, index, key) for index, record in enumerate(records)} for name, records in splits.items()
    }
    for first, second in combinations(splits, 2):
        shared = prompts[first] & prompts[second]
        if shared:
            example = min(shared)
            raise DataError(
                f"splits '{first}' and '{second}' share {len(shared)} prompt(s), e.g. {example[:200]!r}; "
                "a prompt must lie in one split only"
            )
