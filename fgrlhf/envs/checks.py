"""Pre-registered checks that an environment's preference data do not decide a comparison through length.

Decided before any run (issue 21) and enforced by ``benchmarks.common.prepare_data`` before a reward model
trains, for the ``balanced`` env:

- "shorter wins" and "longer wins", each within 45-55 % of the pairs whose two sides differ in length, on
  the training pairs, the training edits (edited = chosen), the held-out gold pairs and the held-out edits;
- the mean token change of an edit within ±1;
- no n-gram (n ≤ 3) seen 20 times or more in edited responses that an equal-size sample of generator
  responses never contains (an RM could spot "edited" by it without judging the response);
- the gold's maximum over the generator's clean responses at an interior length (neither the shortest nor
  the longest length the clean generator writes).

Every function here is pure (lists in, a :class:`Check` out), so each is unit-tested on hand-computed values.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

WIN_SHARE_RANGE = (0.45, 0.55)
MAX_MEAN_TOKEN_CHANGE = 1.0
MARKER_MAX_N = 3
MARKER_MIN_COUNT = 20
_TOKEN = re.compile(r"[a-z0-9']+|[^\sa-z0-9']")


@dataclass(frozen=True)
class Check:
    name: str
    value: float | str | None
    passed: bool
    rule: str

    def line(self) -> str:
        value = f"{self.value:.3f}" if isinstance(self.value, float) else str(self.value)
        return f"{'ok  ' if self.passed else 'FAIL'} {self.name}: {value} (rule: {self.rule})"


class CheckFailed(SystemExit):
    """A pre-registered check failed: the run stops here, with the failing figures."""


def length_win_shares(chosen_lengths: list[int], rejected_lengths: list[int]) -> tuple[float | None, float | None, int]:
    """(shorter wins, longer wins, pairs counted): shares of the pairs whose sides differ in length where
    the chosen side is the shorter / the longer one; equal-length pairs say nothing about length."""
    if len(chosen_lengths) != len(rejected_lengths):
        raise ValueError(f"{len(chosen_lengths)} chosen but {len(rejected_lengths)} rejected lengths")
    differ = [(c, r) for c, r in zip(chosen_lengths, rejected_lengths) if c != r]
    if not differ:
        return None, None, 0
    shorter = sum(c < r for c, r in differ) / len(differ)
    return shorter, 1.0 - shorter, len(differ)


def length_checks(data: str, chosen_lengths: list[int], rejected_lengths: list[int]) -> list[Check]:
    """ "shorter wins" and "longer wins" on one data set, each within :data:`WIN_SHARE_RANGE`."""
    shorter, longer, n = length_win_shares(chosen_lengths, rejected_lengths)
    lo, hi = WIN_SHARE_RANGE
    rule = f"{lo:.0%}-{hi:.0%} of {n} pairs of unequal length"
    return [
        Check(f"{data}: {name}", share, share is not None and lo <= share <= hi, rule)
        for name, share in (("shorter wins", shorter), ("longer wins", longer))
    ]


def mean_change_check(edited_lengths: list[int], original_lengths: list[int]) -> Check:
    """Mean tokens an edit adds (negative: removes), within ±:data:`MAX_MEAN_TOKEN_CHANGE`."""
    if len(edited_lengths) != len(original_lengths) or not edited_lengths:
        raise ValueError(f"paired, non-empty lengths needed ({len(edited_lengths)}, {len(original_lengths)})")
    mean = statistics.fmean(e - o for e, o in zip(edited_lengths, original_lengths))
    return Check(
        "edits: mean token change", mean, abs(mean) <= MAX_MEAN_TOKEN_CHANGE, f"within ±{MAX_MEAN_TOKEN_CHANGE:g}"
    )


def tokens(text: str) -> list[str]:
    """Lower-cased words and punctuation marks: the units of the n-gram check."""
    return _TOKEN.findall(text.lower())


def ngram_counts(texts: Iterable[str], max_n: int = MARKER_MAX_N) -> Counter[tuple[str, ...]]:
    counts: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        units = tokens(text)
        for n in range(1, max_n + 1):
            counts.update(tuple(units[i : i + n]) for i in range(len(units) - n + 1))
    return counts


def edit_only_ngrams(
    edited: list[str], generated: list[str], max_n: int = MARKER_MAX_N, min_count: int = MARKER_MIN_COUNT
) -> list[tuple[str, int]]:
    """n-grams (n ≤ ``max_n``) seen ``min_count`` times or more in ``edited`` that ``generated`` never
    contains, most frequent first."""
    seen = ngram_counts(generated, max_n)
    found = [(" ".join(g), c) for g, c in ngram_counts(edited, max_n).items() if c >= min_count and g not in seen]
    return sorted(found, key=lambda item: (-item[1], item[0]))


def marker_check(edited: list[str], generated: list[str]) -> Check:
    """No edit-only n-gram; ``generated`` must be an equal-size sample of generator responses."""
    if len(edited) != len(generated):
        raise ValueError(f"equal-size samples needed: {len(edited)} edited, {len(generated)} generated")
    markers = edit_only_ngrams(edited, generated)
    shown = ", ".join(f"{g!r} ×{c}" for g, c in markers[:5])
    return Check(
        "edits: edit-only n-grams",
        f"{len(markers)}" + (f" ({shown})" if markers else ""),
        not markers,
        f"none with n ≤ {MARKER_MAX_N} seen ≥ {MARKER_MIN_COUNT} times in {len(edited)} edited responses "
        f"and never in {len(generated)} generator responses",
    )


def gold_by_length(lengths: list[int], golds: list[float]) -> dict[int, float]:
    """Mean gold per length, by length."""
    groups: dict[int, list[float]] = {}
    for n, g in zip(lengths, golds, strict=True):
        groups.setdefault(n, []).append(g)
    return {n: statistics.fmean(groups[n]) for n in sorted(groups)}


def interior_optimum_check(lengths: list[int], golds: list[float]) -> Check:
    """The length with the highest mean gold lies strictly between the shortest and the longest length."""
    by_length = gold_by_length(lengths, golds)
    if len(by_length) < 3:
        return Check("clean generator: gold-maximising length", None, False, "needs 3 or more distinct lengths")
    best = max(by_length, key=lambda n: by_length[n])
    shortest, longest = min(by_length), max(by_length)
    return Check(
        "clean generator: gold-maximising length",
        f"{best} words (gold {by_length[best]:.3f})",
        shortest < best < longest,
        f"strictly between {shortest} and {longest} words",
    )


def enforce(checks: list[Check]) -> None:
    """Raise :class:`CheckFailed` naming every failed check with its figure."""
    failed = [c for c in checks if not c.passed]
    if failed:
        raise CheckFailed(
            "error: pre-registered data check failed (change the generator's distributions, never the RMs or "
            "PPO): " + "; ".join(c.line() for c in failed)
        )


# ---------------------------------------------------------------- generator level (no model, seconds)
def generator_level_checks(
    env: str,
    rules: str,
    rounds: int = 8,
    heldout_per_prompt: int = 8,
    seed: int = 0,
    heldout_seed: int = 10_000,
    clean_per_prompt: int = 20,
) -> list[Check]:
    """The same checks on data made as ``prepare_data`` makes it, minus the models: generator pairs labelled
    as ``fgrlhf env-data`` labels them (Bradley–Terry 0.05, noise 0.1), gold-ordered held-out pairs, their
    rejected sides edited by ``rules`` (edits changing over half the tokens dropped, as ``fgrlhf edit``
    does), lengths in ``tiny`` tokens. For iterating on the generator's distributions before a real run."""
    from fgrlhf.editing.config import RuleEditorConfig
    from fgrlhf.editing.editors import RuleEditor
    from fgrlhf.editing.pipeline import classify
    from fgrlhf.envs import load_env
    from fgrlhf.envs.preferences import label_pairs
    from fgrlhf.models import load_tokenizer

    module = load_env(env)
    tokenizer = load_tokenizer("tiny")
    editor = RuleEditor(RuleEditorConfig(rules=rules))
    train_prompts, eval_prompts = module.split_prompts()

    def pairs(prompts: list[str], pair_seed: int, temperature: float, noise: float) -> list[dict]:
        responses = [tuple(r) for r in module.sample_responses(prompts, 2, pair_seed)]
        flat = module.gold_reward([p for p in prompts for _ in range(2)], [r for pair in responses for r in pair])
        records = label_pairs(prompts, responses, list(zip(flat[::2], flat[1::2])), temperature, noise, pair_seed)
        return [r for r in records if temperature or r["gold_chosen"] != r["gold_rejected"]]

    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def edits(records: list[dict]) -> list[tuple[str, str, int, int]]:
        """(original, edited, original tokens, edited tokens) of the edits ``fgrlhf edit`` would keep."""
        originals = [r["rejected"] for r in records]
        edited = [editor.apply(r["rejected"], r["prompt"]) for r in records]
        out = []
        for o, e, o_ids, e_ids in zip(originals, edited, ids(originals), ids(edited)):
            if classify(o_ids, e_ids, e, 0.5)[0] == "edited":
                out.append((o, e, len(o_ids), len(e_ids)))
        return out

    train = [r for k in range(rounds) for r in pairs(train_prompts, seed + k, 0.05, 0.1)]
    heldout = pairs([p for p in eval_prompts for _ in range(heldout_per_prompt)], heldout_seed, 0.0, 0.0)
    checks = []
    for name, records in (("training pairs", train), ("heldout_gold", heldout)):
        chosen, rejected = ids([r["chosen"] for r in records]), ids([r["rejected"] for r in records])
        checks += length_checks(name, [len(c) for c in chosen], [len(r) for r in rejected])
    train_edits, heldout_edits = edits(train), edits(heldout)
    for name, done in (("training edits", train_edits), ("heldout_edits", heldout_edits)):
        checks += length_checks(name, [e[3] for e in done], [e[2] for e in done])
    both = train_edits + heldout_edits
    checks.append(mean_change_check([e[3] for e in both], [e[2] for e in both]))
    generated = [r[0] for r in module.sample_responses([r["prompt"] for r in train], 1, seed + 777)]
    checks.append(marker_check([e[1] for e in train_edits], generated[: len(train_edits)]))
    clean = [r for rs in module.sample_responses(train_prompts, clean_per_prompt, seed, module.CLEAN) for r in rs]
    clean_prompts = [p for p in train_prompts for _ in range(clean_per_prompt)]
    from fgrlhf.envs.gold import words

    checks.append(interior_optimum_check([len(words(r)) for r in clean], module.gold_reward(clean_prompts, clean)))
    return checks
