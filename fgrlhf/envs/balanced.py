"""``balanced``: the ``synthetic`` grammar task without its length confound.

``synthetic`` favours shorter answers by construction: every fault it injects is an insertion, its gold
counts faults (so gold falls with length) and its annotator's fixes mostly delete. Here, with the same
prompts, topics and sentence grammar ("The ADJ NOUN VERB ADV PREP the NOUN."):

- the gold's length credit peaks at 32 words (four sentences; the generator writes 2-5), so shorter and
  longer both lose credit, and local faults count as a rate per sentence;
- faults come as insertions (a filler phrase, a stuttered word, a repeated sentence) and as omissions (a
  dropped word, a sentence truncated after its adverb, a prompt aspect never mentioned), at rates chosen
  so that they add and remove about as many words;
- the annotator's fixes (configs/edit-rules-balanced.yaml) delete what was inserted and restore what was
  omitted, writing only word sequences the generator itself produces.

``benchmarks.common.prepare_data`` checks these properties on the data it builds (``fgrlhf.envs.checks``)
before any reward model trains. The gold hook is ``fgrlhf.envs.balanced:gold_reward``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from fgrlhf.envs import synthetic
from fgrlhf.envs.gold import GoldSpec, gold_scores, sentence_spans, words
from fgrlhf.envs.synthetic import (
    ADJECTIVES,
    ADVERBS,
    FILLERS,
    NOUNS,
    PREPOSITIONS,
    TOPICS,
    VERBS,
    fix_missing_aspect,
    parse_prompt,
    split_prompts,
)

__all__ = [
    "GOLD",
    "NAME",
    "eval_records",
    "fix_dropped_word",
    "fix_missing_aspect",
    "fix_truncated",
    "gold_reward",
    "sample_response",
    "sample_responses",
    "sft_synthetic_policy",
    "split_prompts",
]

NAME = "balanced"
# The sentence's slots; the gold counts a sentence that does not fill them as one fault.
SLOTS = (
    frozenset({"the"}),
    frozenset(ADJECTIVES),
    NOUNS,
    frozenset(VERBS),
    frozenset(ADVERBS),
    frozenset(PREPOSITIONS),
    frozenset({"the"}),
    NOUNS,
)
# Slots a dropped word may come from (a dropped noun would also be a missing aspect).
DROPPABLE = {1: ADJECTIVES, 3: VERBS, 4: ADVERBS, 5: PREPOSITIONS}
# length_lo = length_hi: the length credit is a peak at 32 words (n/32 below, 2 - n/32 above).
GOLD = GoldSpec(
    disfavoured=FILLERS,
    length_lo=32,
    length_hi=32,
    ngram=5,
    length_needs_relevance=True,
    alpha=2.0,
    fault_rate="sentence",
    template=SLOTS,
)


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """Gold hook ``fgrlhf.envs.balanced:gold_reward`` (raw or chat/Alpaca-formatted prompts)."""
    return gold_scores(GOLD, prompts, responses)


@dataclass(frozen=True)
class FaultRates:
    """Per-sentence probabilities of each fault (``missing_aspect``: per response), and the sentence count."""

    # Tuned (generator only) until the checks of fgrlhf.envs.checks pass: insertions and omissions are about
    # equally frequent (0.21 vs 0.20 a sentence) and add/remove about as many words; with more faults the
    # fault rate's spread, larger in short responses, made the shorter side win 57 % of the pairs.
    filler: float = 0.11  # insertion, +1-2 words
    stutter: float = 0.08  # insertion, +1 word
    repeat: float = 0.02  # insertion, +8 words
    dropped_word: float = 0.12  # omission, -1 word
    truncated: float = 0.08  # omission, -3 words
    missing_aspect: float = 0.2  # omission of a prompt noun, same length
    min_sentences: int = 2
    max_sentences: int = 5


CLEAN = FaultRates(filler=0.0, stutter=0.0, repeat=0.0, dropped_word=0.0, truncated=0.0, missing_aspect=0.0)


def _nouns_for(rng: random.Random, topic: str, aspects: tuple[str, ...], slots: int, rates: FaultRates) -> list[str]:
    """One noun per slot: every prompt noun at least once (unless an aspect goes missing), the rest from
    the topic's family without the missing aspect."""
    required = [topic, *aspects]
    if aspects and rng.random() < rates.missing_aspect:
        required.remove(rng.choice(aspects))
    pool = [n for n in (topic, *TOPICS[topic]) if n in required or n not in aspects]
    nouns = [rng.choice(pool) for _ in range(slots)]
    for noun, at in zip(required, rng.sample(range(slots), min(slots, len(required)))):
        nouns[at] = noun
    return nouns


def _sentence(rng: random.Random, subject: str, obj: str, rates: FaultRates) -> str:
    parts = ["The", rng.choice(ADJECTIVES), subject, rng.choice(VERBS), rng.choice(ADVERBS)]
    parts += [rng.choice(PREPOSITIONS), "the", obj]
    if rng.random() < rates.truncated:
        del parts[5:]
    elif rng.random() < rates.dropped_word:
        del parts[rng.choice(sorted(DROPPABLE))]
    end = "."
    if rng.random() < rates.filler:
        filler = rng.choice(FILLERS)
        if filler == "you know":
            end = ", you know."
        else:
            parts.insert(3, filler)
    if rng.random() < rates.stutter:
        at = rng.randrange(1, len(parts))
        parts.insert(at, parts[at])
    return " ".join(parts) + end


def sample_response(prompt: str, rng: random.Random, rates: FaultRates = FaultRates()) -> str:
    topic, aspects = parse_prompt(prompt)
    count = rng.randint(rates.min_sentences, rates.max_sentences)
    nouns = _nouns_for(rng, topic, aspects, 2 * count, rates)
    out = []
    for i in range(count):
        sentence = _sentence(rng, nouns[2 * i], nouns[2 * i + 1], rates)
        out.append(sentence)
        if rng.random() < rates.repeat:
            out.append(sentence)
    return " ".join(out)


def sample_responses(
    prompts: list[str], per_prompt: int, seed: int, rates: FaultRates = FaultRates()
) -> list[list[str]]:
    return synthetic.sample_responses(prompts, per_prompt, seed, sample=lambda p, rng: sample_response(p, rng, rates))


def eval_records(prompts: list[str], seed: int) -> list[dict]:
    """Eval prompts with a reference: one sample of this env's (faulty) generator, seeded per prompt."""
    return synthetic.eval_records(prompts, seed, sample=sample_response, env=NAME)


def sft_synthetic_policy(out_dir: str | Path, steps: int = 2000, seed: int = 0) -> dict:
    """The ``tiny`` Llama trained on this env's generator (:func:`fgrlhf.envs.synthetic.sft_synthetic_policy`)."""
    return synthetic.sft_synthetic_policy(out_dir, steps=steps, seed=seed, sample=sample_response)


# ---------------------------------------------------------------- fixer hooks that add words
# The deletions (fillers, stutters, a repeated sentence) are regex rules; these restore what an omission
# removed, with words of the grammar drawn by a text-seeded generator (reproducible edits).
_TOKEN = re.compile(r"[A-Za-z]+")


def _slot_words(text: str, start: int, end: int) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), m.group().lower()) for m in _TOKEN.finditer(text, start, end)]


def fix_dropped_word(instruction: str, text: str) -> list[tuple[int, int, str]]:
    """A sentence with one adjective, verb, adverb or preposition missing gets a grammar word in that slot."""
    fixes = []
    for index, (start, end) in enumerate(sentence_spans(text)):
        found = _slot_words(text, start, end)
        if len(found) != len(SLOTS) - 1:
            continue
        for slot, vocabulary in DROPPABLE.items():
            candidate = [w for _, _, w in found[:slot]] + ["?"] + [w for _, _, w in found[slot:]]
            if all(w in allowed for w, allowed in zip(candidate, SLOTS) if w != "?"):
                rng = random.Random(f"{instruction}\0{index}\0{text[start:end]}")
                at = found[slot - 1][1]
                fixes.append((at, at, f" {rng.choice(vocabulary)}"))
                break
    return fixes


def fix_truncated(instruction: str, text: str) -> list[tuple[int, int, str]]:
    """A sentence that stops after its adverb gets "PREP the NOUN" back, the noun a prompt noun the
    response does not mention yet if there is one."""
    topic, aspects = parse_prompt(instruction)
    mentioned = set(words(text))
    fixes = []
    for index, (start, end) in enumerate(sentence_spans(text)):
        found = _slot_words(text, start, end)
        if len(found) != 5 or not all(w in allowed for (_, _, w), allowed in zip(found, SLOTS)):
            continue
        rng = random.Random(f"{instruction}\0{index}\0{text[start:end]}")
        missing = [n for n in (topic, *aspects) if n not in mentioned]
        noun = missing[0] if missing else rng.choice((topic, *aspects))
        mentioned.add(noun)
        at = found[-1][1]
        fixes.append((at, at, f" {rng.choice(PREPOSITIONS)} the {noun}"))
    return fixes
