"""The length-neutral ``balanced`` env (fgrlhf.envs.balanced) and the pre-registered data checks
(fgrlhf.envs.checks): pure checks on hand-computed values, the gold's interior length optimum and fault
rate, the fixers that add words, and the generator-level checks passing as tuned."""

import math

import pytest

from fgrlhf.envs import balanced, checks
from fgrlhf.envs.env_data import ENV_CHOICES
from fgrlhf.envs.gold import gold_breakdown, words

PROMPT = "Write about the river, the fish and the bridge."
S1 = "The quiet river rests slowly near the bridge."
S2 = "The small fish waits calmly under the river."
S3 = "The old bridge stands softly beside the fish."
S4 = "The green river drifts proudly above the fish."


def gold(text: str) -> float:
    return balanced.gold_reward([PROMPT], [text])[0]


# ---------------------------------------------------------------- pure checks, hand-computed
def test_length_win_shares_count_only_pairs_of_unequal_length():
    # (10, 8) longer wins, (5, 9) shorter wins, (7, 7) says nothing about length, (7, 3) longer wins
    assert checks.length_win_shares([10, 5, 7, 7], [8, 9, 7, 3]) == (pytest.approx(1 / 3), pytest.approx(2 / 3), 3)
    assert checks.length_win_shares([4], [4]) == (None, None, 0)
    failed = checks.length_checks("pairs", [10, 5, 7, 7], [8, 9, 7, 3])
    assert [c.passed for c in failed] == [False, False] and failed[0].name == "pairs: shorter wins"
    assert all(c.passed for c in checks.length_checks("pairs", [1, 3], [2, 2]))  # one each way: 50 %
    assert not any(c.passed for c in checks.length_checks("pairs", [4], [4]))  # no evidence is no pass


def test_mean_token_change_within_one():
    ok = checks.mean_change_check([10, 12, 9], [11, 10, 9])  # (-1 + 2 + 0) / 3
    assert ok.passed and ok.value == pytest.approx(1 / 3)
    shortening = checks.mean_change_check([5, 5], [7, 7])
    assert not shortening.passed and shortening.value == pytest.approx(-2.0)


def test_edit_only_ngrams_need_twenty_sightings_and_none_in_the_generator():
    edited, generated = ["a b ."] * 20, ["a c ."] * 20
    # "b", "a b", "b ." and "a b ." occur 20 times in the edits and never in the generator's text
    assert checks.edit_only_ngrams(edited, generated) == [("a b", 20), ("a b .", 20), ("b", 20), ("b .", 20)]
    assert checks.edit_only_ngrams(edited[:19], generated) == []
    # without its full stop the generator never shows "." either
    assert checks.edit_only_ngrams(edited, ["a b"] * 20) == [(".", 20), ("a b .", 20), ("b .", 20)]
    marker = checks.marker_check(edited, generated)
    assert not marker.passed and "'a b' ×20" in marker.value
    with pytest.raises(ValueError, match="equal-size"):
        checks.marker_check(edited, generated[:3])


def test_interior_optimum_of_the_mean_gold_per_length():
    lengths = [16, 16, 24, 32, 40]
    assert checks.gold_by_length(lengths, [0.5, 0.7, 0.8, 0.9, 0.6]) == {
        16: pytest.approx(0.6),
        24: 0.8,
        32: 0.9,
        40: 0.6,
    }
    assert checks.interior_optimum_check(lengths, [0.5, 0.7, 0.8, 0.9, 0.6]).passed
    edge = checks.interior_optimum_check(lengths, [0.5, 0.7, 0.8, 0.9, 0.95])
    assert not edge.passed and edge.value.startswith("40 words")


def test_enforce_stops_with_every_failing_figure():
    good = checks.mean_change_check([1], [1])
    bad = checks.mean_change_check([1], [4])
    checks.enforce([good])
    with pytest.raises(checks.CheckFailed, match=r"FAIL edits: mean token change: -3\.000 \(rule: within ±1\)"):
        checks.enforce([good, bad])


# ---------------------------------------------------------------- the env
def test_balanced_is_an_env_choice_and_its_gold_peaks_inside_the_generators_lengths():
    assert "balanced" in ENV_CHOICES
    two, four, five = " ".join([S1, S2]), " ".join([S1, S2, S3, S4]), " ".join([S1, S2, S3, S4, S1])
    assert len(words(four)) == 32
    # L = n/32 below, 2 - n/32 above: 16 words 0.5, 32 words 1, 40 words 0.75
    assert [gold_breakdown(balanced.GOLD, PROMPT, t).length for t in (two, four)] == [0.5, 1.0]
    assert gold(four) > gold(two) and gold(four) > gold(" ".join([S1, S2, S3, S4, S2.replace("small", "old")]))
    assert gold(five) < gold(four)


def test_faults_count_as_a_rate_and_omissions_are_faults():
    truncated = "The quiet river rests slowly."
    dropped = "The quiet river slowly near the bridge."
    assert balanced.GOLD.fits_template(S1)
    assert balanced.GOLD.fits_template("The quiet river basically rests slowly near the the bridge.")
    assert not balanced.GOLD.fits_template(truncated) and not balanced.GOLD.fits_template(dropped)
    assert gold_breakdown(balanced.GOLD, PROMPT, " ".join([S1, truncated, dropped])).local_faults == 2
    # one filler in 2 sentences costs exp(-2 · 1/2); in 4 sentences exp(-2 · 1/4): a rate, not a count
    filler = S1.replace("rests", "basically rests")
    for text, factor in ((" ".join([filler, S2]), math.exp(-1.0)), (" ".join([filler, S2, S3, S4]), math.exp(-0.5))):
        parts = gold_breakdown(balanced.GOLD, PROMPT, text)
        assert parts.local_faults == 1 and parts.repetition == 0
        assert parts.gold == pytest.approx(parts.global_term * factor)


def test_fixers_restore_omissions_with_grammar_words():
    text = f"{S1} The quiet fish slowly near the bridge. The old bridge stands softly."
    ((at, end, word),) = balanced.fix_dropped_word(PROMPT, text)
    fixed = text[:at] + word + text[end:]
    assert at == end and word.strip() in balanced.VERBS and balanced.GOLD.local_fault_count(fixed) == 1
    ((at, end, tail),) = balanced.fix_truncated(PROMPT, fixed)
    restored = fixed[:at] + tail + fixed[end:]
    assert balanced.GOLD.local_fault_count(restored) == 0 and restored.endswith(".")
    # the truncation fix names a prompt noun the response never mentioned first
    ((_, _, tail),) = balanced.fix_truncated(PROMPT, "The quiet river rests slowly.")
    assert tail.endswith(" the fish") and tail.split()[0] in balanced.PREPOSITIONS
    assert balanced.fix_dropped_word(PROMPT, S1) == [] and balanced.fix_truncated(PROMPT, S1) == []


def test_generator_writes_both_kinds_of_fault_and_keeps_synthetics_prompts():
    responses = [r for rs in balanced.sample_responses(balanced.split_prompts()[0], 4, 0) for r in rs]
    malformed = sum(not balanced.GOLD.fits_template(s) for r in responses for s in r.split(". "))
    fillers = sum(f in r for r in responses for f in ("basically", "honestly", "kind of", "you know"))
    assert malformed > 20 and fillers > 20
    clean = balanced.sample_responses([PROMPT], 20, 0, balanced.CLEAN)[0]
    assert all(gold_breakdown(balanced.GOLD, PROMPT, r).local_faults == 0 for r in clean)
    assert {len(words(r)) for r in clean} <= {16, 24, 32, 40}


def test_generator_level_checks_pass_with_the_tuned_rates():
    results = checks.generator_level_checks("balanced", "configs/edit-rules-balanced.yaml")
    assert len(results) == 11 and all(c.passed for c in results), [c.line() for c in results if not c.passed]


def test_the_annotator_both_adds_and_removes_and_raises_gold():
    from fgrlhf.editing.config import RuleEditorConfig
    from fgrlhf.editing.editors import RuleEditor

    editor = RuleEditor(RuleEditorConfig(rules="configs/edit-rules-balanced.yaml"))
    prompts = balanced.split_prompts()[0]
    originals = [rs[0] for rs in balanced.sample_responses(prompts, 1, 3)]
    edited = [editor.apply(o, p) for o, p in zip(originals, prompts)]
    deltas = [len(words(e)) - len(words(o)) for e, o in zip(edited, originals)]
    assert sum(d > 0 for d in deltas) > 5 and sum(d < 0 for d in deltas) > 5
    before, after = balanced.gold_reward(prompts, originals), balanced.gold_reward(prompts, edited)
    assert sum(after) > sum(before) and all(a >= b - 1e-9 for a, b in zip(after, before))


def test_prepare_data_checks_stop_on_length_confounded_data(tmp_path, capsys):
    from benchmarks.common import check_data
    from fgrlhf.data.loading import write_jsonl

    # "synthetic"-like data: every chosen side and every edit is the shorter one
    long = " ".join([S1, S2, S3, S4])
    pairs = [{"prompt": PROMPT, "chosen": S1, "rejected": long}] * 4
    edits = [{"prompt": PROMPT, "status": "edited", "original": long, "edited": S1}] * 4
    paths = {name: tmp_path / f"{name}.jsonl" for name in ("pairs", "edits", "heldout", "heldout_edits")}
    for name, records in (("pairs", pairs), ("edits", edits), ("heldout", pairs), ("heldout_edits", edits)):
        write_jsonl(paths[name], records)
    with pytest.raises(checks.CheckFailed) as failed:
        check_data("balanced", *paths.values(), "tiny")
    message = str(failed.value)
    assert "FAIL training pairs: shorter wins: 1.000" in message and "FAIL edits: mean token change" in message
    # every figure is printed as it is made, the length checks first
    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0]
        == "data check: FAIL training pairs: shorter wins: 1.000 (rule: 45%-55% of 4 pairs of unequal length)"
    )
    assert len(printed) == 11


def test_env_data_balanced_samples_its_own_generator(tmp_path):
    from fgrlhf.data.loading import read_jsonl
    from fgrlhf.envs.env_data import EnvDataConfig, build
    from fgrlhf.evaluation.winrate import load_eval_records

    summary = build("balanced", EnvDataConfig(n_prompts=12, label_noise=0.0, bt_temperature=0.0), tmp_path)
    assert summary["env"] == "balanced" and summary["pairs"] == 12 and summary["label_agrees_with_gold"] == 1.0
    references = read_jsonl(tmp_path / "prompts_eval.jsonl")
    assert references == load_eval_records("balanced", None, None)
    assert all(r["reference_generator"] == "balanced-grammar" for r in references)
    # only the balanced generator omits words: some sentence misses a slot
    texts = [r["reference"] for r in references] + [p["chosen"] for p in read_jsonl(tmp_path / "pairs.jsonl")]
    assert any(not balanced.GOLD.fits_template(s) and "basically" not in s for t in texts for s in t.split(". "))
