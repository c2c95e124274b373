"""``alpaca-sim``: the 805 AlpacaEval instructions, SmolLM2 as the policy, a programmatic gold annotator.

Prompts are the instructions of the packaged ``alpaca_eval/eval_set.jsonl`` (:func:`fgrlhf.data.loading.resolve_data_path`;
each with its text-davinci-003 reference output), split deterministically into train (PPO/pair prompts) and eval by a
hash of the instruction text. The gold annotator is :mod:`fgrlhf.envs.gold` over the real text:

- disfavoured phrases: assistant boilerplate, hedges and filler (``DISFAVOURED`` below), each occurrence
  multiplies the score by e^-0.5;
- repetition: the share of repeated word 4-grams (seq-rep-4 of Welleck et al. 2019; small models
  loop), weight 3; doubled words ("the the") count as local faults;
- relevance: coverage of the instruction's content words plus the share of sentences that mention one;
- length: 20-200 words is full credit (AlpacaEval answers are mostly in this band).

It is a stand-in for a human or LLM judge, not a model of one: see docs/environments.md for its limits.
"""

from __future__ import annotations

from pathlib import Path

from fgrlhf.data.loading import ALPACA_EVAL_SET
from fgrlhf.envs import in_eval_split
from fgrlhf.envs.gold import GoldSpec, gold_scores

NAME = "alpaca-sim"
DISFAVOURED = (
    "as an ai language model",
    "as an ai",
    "i'm sorry, but",
    "i am sorry, but",
    "i cannot",
    "i can't",
    "it is important to note that",
    "it's important to note that",
    "it is worth noting that",
    "it's worth noting that",
    "in conclusion",
    "i hope this helps",
    "feel free to",
    "let me know if",
    "basically",
    "literally",
    "great question",
    "in today's world",
    "at the end of the day",
)

GOLD = GoldSpec(disfavoured=DISFAVOURED, length_lo=20, length_hi=200, ngram=4)


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold hook ``fgrlhf.envs.alpaca_sim:gold_reward`` (raw or chat/Alpaca-formatted prompts)."""
    return gold_scores(GOLD, prompts, responses)


def load_eval_set(path: str | Path = ALPACA_EVAL_SET) -> list[dict]:
    from fgrlhf.data.loading import load_records

    # A few davinci-003 references are empty strings: real (bad) outputs, kept so the eval set stays 805.
    return load_records(path, ("prompt", "reference"), allow_empty=("reference",))


def split_records(records: list[dict], eval_fraction: float = 0.2) -> tuple[list[dict], list[dict]]:
    """Deterministic train/eval split by a hash of the instruction (same rule as the synthetic env)."""
    return (
        [r for r in records if not in_eval_split(r["prompt"], eval_fraction)],
        [r for r in records if in_eval_split(r["prompt"], eval_fraction)],
    )
