"""Programmatic gold reward shared by the simulated-preference environments.

For an instruction x and a response y (words = lower-cased alphanumeric runs, stems = words with a plural
``s`` removed, content stems = stems that are not stop words or task verbs):

- coverage  C = |stems(x) ∩ stems(y)| / |stems(x)|   (content stems of x that y mentions; 1 if x has none)
- focus     F = share of y's sentences that mention at least one content stem of x
- relevance R = (C + F) / 2
- length    L = 1 inside [lo, hi] words, n/lo below, max(0, 1 - (n - hi)/hi) above (lo = hi: a peak)
- global    G = w_rel·R + (1 - w_rel)·L·R   (``length_needs_relevance``; else w_rel·R + (1 - w_rel)·L)  ∈ [0, 1]
            Gated by R, the length credit cannot be earned by text unrelated to the instruction: ungated,
            any well-sized random text collects (1 - w_rel)·L.
- local     d = occurrences of the env's disfavoured phrases (word-bounded, case-insensitive)
                + immediately doubled words ("the the")
                + sentences that do not fit the env's ``template`` once those are removed (if it has one:
                  a dropped word, a truncated sentence)
            ``fault_rate="sentence"`` divides d by the number of sentences, so a longer response is not
            charged for being longer; "count" (the default) charges every fault alike.
            r = repeated word n-gram share, 1 - #distinct / #all n-grams   ∈ [0, 1] (n per env)
- gold      g = G · exp(-α·d - β·r)                                      ∈ [0, 1]

The local faults scale the global credit multiplicatively, so g is not a sum of per-token terms: removing
the same disfavoured phrase is worth more in a relevant, well-sized response than in an off-topic one,
and mentioning a prompt word a second time adds nothing (coverage is a set) while the first mention can
add a lot. A token-level reward model can only approximate this; that gap is part of what is measured.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_DOUBLED = re.compile(r"\b(\w+)\s+\1\b", re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
# Formatted prompts reach the gold hook (PPO passes the policy's prompt text): recover the instruction.
_CHAT_USER = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)
_ALPACA = re.compile(r"### Instruction:\n(.*?)(?:\n\n### Input:\n(.*?))?\n\n### Response:", re.S)

STOP_WORDS = frozenset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further had has
    have having he her here hers herself him himself his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our ours out over own same she should so
    some such than that the their theirs them then there these they this those through to too under until
    up very was we were what when where which while who whom why will with would you your yours
    yourself one two get got make made use used many much way well like thing things""".split()
)
# Task verbs say what to do, not what to talk about; they do not count towards relevance.
TASK_WORDS = frozenset(
    """write explain describe give list tell provide please create generate name suggest show help want
    need know find let answer question summarize summarise compose draft rewrite say following""".split()
)


def extract_instruction(prompt: str) -> str:
    """The instruction inside a chat-template or AlpacaFarm-template prompt, or the prompt itself."""
    users = _CHAT_USER.findall(prompt)
    if users:
        return users[-1]
    match = _ALPACA.search(prompt)
    if match:
        return " ".join(part for part in match.groups() if part)
    return prompt


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def stem(word: str) -> str:
    """Crude plural folding (rivers -> river, bridges -> bridge); enough for overlap counting."""
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w not in STOP_WORDS and w not in TASK_WORDS and len(w) > 1}


def sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if words(s)]


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) character spans of :func:`sentences` in ``text`` itself (for edits that keep the rest)."""
    spans, start = [], 0
    for separator in [*_SENTENCE_END.finditer(text), None]:
        end = separator.start() if separator else len(text)
        piece = text[start:end]
        if words(piece):
            spans.append((start + len(piece) - len(piece.lstrip()), end))
        start = separator.end() if separator else end
    return spans


def coverage(prompt_stems: set[str], response: str) -> float:
    if not prompt_stems:
        return 1.0
    return len(prompt_stems & content_stems(response)) / len(prompt_stems)


def focus(prompt_stems: set[str], response: str) -> float:
    parts = sentences(response)
    if not parts:
        return 0.0
    if not prompt_stems:
        return 1.0
    return sum(bool(prompt_stems & content_stems(s)) for s in parts) / len(parts)


def length_score(n_words: int, lo: int, hi: int) -> float:
    if n_words < lo:
        return n_words / lo
    if n_words > hi:
        return max(0.0, 1.0 - (n_words - hi) / hi)
    return 1.0


def repeated_ngram_share(tokens: list[str], n: int) -> float:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def phrase_pattern(phrases: tuple[str, ...]) -> re.Pattern[str]:
    """One case-insensitive, word-bounded alternation; longer phrases first so they win overlaps."""
    ordered = sorted(phrases, key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(p) for p in ordered) + r")(?!\w)", re.I)


@dataclass(frozen=True)
class GoldSpec:
    """An environment's gold-reward parameters (see the module docstring for the formula)."""

    disfavoured: tuple[str, ...]
    length_lo: int
    length_hi: int
    w_relevance: float = 0.6
    alpha: float = 0.5  # per local fault (disfavoured phrase or doubled word)
    beta: float = 3.0  # per unit of repeated n-gram share
    ngram: int = 3
    length_needs_relevance: bool = False  # length credit L·R instead of L
    fault_rate: Literal["count", "sentence"] = "count"  # d itself, or d per sentence
    # Word sets of a well-formed sentence, slot by slot: a sentence that does not fit is one fault.
    template: tuple[frozenset[str], ...] | None = None
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_pattern", phrase_pattern(self.disfavoured))

    def local_fault_count(self, response: str) -> int:
        count = len(self._pattern.findall(response)) + len(_DOUBLED.findall(response))
        if self.template is not None:
            count += sum(not self.fits_template(s) for s in sentences(response))
        return count

    def fits_template(self, sentence: str) -> bool:
        """Whether ``sentence``, without its disfavoured phrases and doubled words, fills the template."""
        assert self.template is not None
        tokens = words(_DOUBLED.sub(r"\1", self._pattern.sub(" ", sentence)))
        return len(tokens) == len(self.template) and all(t in slot for t, slot in zip(tokens, self.template))


@dataclass(frozen=True)
class GoldBreakdown:
    coverage: float
    focus: float
    length: float
    global_term: float
    local_faults: int
    repetition: float
    gold: float


def gold_breakdown(spec: GoldSpec, prompt: str, response: str) -> GoldBreakdown:
    prompt_stems = content_stems(extract_instruction(prompt))
    cov, foc = coverage(prompt_stems, response), focus(prompt_stems, response)
    tokens = words(response)
    length = length_score(len(tokens), spec.length_lo, spec.length_hi)
    relevance = (cov + foc) / 2
    length_credit = length * relevance if spec.length_needs_relevance else length
    global_term = spec.w_relevance * relevance + (1 - spec.w_relevance) * length_credit
    d = spec.local_fault_count(response)
    r = repeated_ngram_share(tokens, spec.ngram)
    penalty = d / max(1, len(sentences(response))) if spec.fault_rate == "sentence" else d
    gold = global_term * math.exp(-spec.alpha * penalty - spec.beta * r)
    return GoldBreakdown(cov, foc, length, global_term, d, r, gold)


def gold_scores(spec: GoldSpec, prompts: list[str], responses: list[str]) -> list[float]:
    if len(prompts) != len(responses):
        raise ValueError(f"gold reward: {len(prompts)} prompts but {len(responses)} responses")
    return [gold_breakdown(spec, p, r).gold for p, r in zip(prompts, responses)]
