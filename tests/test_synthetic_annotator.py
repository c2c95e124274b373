"""The synthetic env's global-fault annotator: prompt-aware fixer rules of the rule editor
(configs/edit-rules-synthetic-global.yaml, fgrlhf.envs.synthetic.fix_*), per-fault recall and the
per-fault fix counts the edit pipeline reports."""

import asyncio
import json
import random
from pathlib import Path

import pytest

from fgrlhf.config import ConfigError
from fgrlhf.editing.config import EditConfig, RuleEditorConfig
from fgrlhf.editing.editors import RuleEditor
from fgrlhf.editing.pipeline import run_edit
from fgrlhf.editing.retry import PermanentError
from fgrlhf.envs import synthetic
from fgrlhf.envs.gold import content_stems, words

ROOT = Path(__file__).resolve().parents[1]
GLOBAL_RULES = ROOT / "configs" / "edit-rules-synthetic-global.yaml"
PROMPT = "Write about the river, the fish and the bridge."
GRAMMAR = (
    set(synthetic.NOUNS)
    | {w.lower() for w in synthetic.ADJECTIVES + synthetic.VERBS + synthetic.ADVERBS + synthetic.PREPOSITIONS}
    | {"the"}
)


def _apply(fixes, text):
    out, position = [], 0
    for start, end, replacement in sorted(fixes):
        out += [text[position:start], replacement]
        position = end
    return "".join(out) + text[position:]


def test_off_topic_sentence_gets_the_prompts_nouns_at_the_same_length():
    on = "The quiet river rests near the old bridge."
    off = "The small train waits under the green street."
    text = f"{on} {off}"
    fixes = synthetic.fix_off_topic_nouns(PROMPT, text)
    assert len(fixes) == 1  # the on-topic sentence is left alone
    edited = _apply(fixes, text)
    assert edited.startswith(on + " The small ") and len(words(edited)) == len(words(text))
    second = edited[len(on) + 1 :]
    assert content_stems(second) & {"river", "fish", "bridge"} and not content_stems(second) & {"train", "street"}
    # A sentence that names a noun of the prompt's topic is not off-topic, even if not a prompt noun.
    assert synthetic.fix_off_topic_nouns(PROMPT, "The small boat waits under the green street.") == []


def test_missing_aspect_swaps_one_noun_and_never_uncovers_another():
    text = "The quiet river rests near the old bank. The small river waits under the green bridge."
    (fix,) = synthetic.fix_missing_aspect(PROMPT, text)
    assert text[fix[0] : fix[1]] == "bank" and fix[2] == "fish"  # the one noun the prompt does not name
    # Without such a noun, a prompt noun mentioned twice gives way; "bridge" (once) is never swapped.
    text = "The quiet river rests near the old river. The small river waits under the green bridge."
    (fix,) = synthetic.fix_missing_aspect(PROMPT, text)
    assert text[fix[0] : fix[1]] == "river" and fix[2] == "fish"
    assert content_stems(_apply([fix], text)) >= {"river", "fish", "bridge"}
    assert synthetic.fix_missing_aspect(PROMPT, "The fish rests near the river and the bridge.") == []


def test_too_short_appends_one_grammar_sentence_and_too_long_drops_trailing_sentences():
    short = "The quiet river rests near the old bridge."
    (fix,) = synthetic.fix_too_short(PROMPT, short, min_words=15)
    added = fix[2]
    assert fix[:2] == (len(short), len(short)) and added.startswith(" The ") and len(words(added)) == 8
    assert set(words(added)) <= GRAMMAR and content_stems(added) & {"river", "fish", "bridge"}
    assert synthetic.fix_too_short(PROMPT, short, min_words=8) == []

    sentence = "The quiet river rests near the old bridge."  # 8 words
    long = " ".join([sentence] * 7)  # 56 words
    (fix,) = synthetic.fix_too_long(PROMPT, long, max_words=45)
    kept = _apply([fix], long)
    assert kept == " ".join([sentence] * 5) and len(words(kept)) == 40  # 6 sentences would be 48 > 45
    assert synthetic.fix_too_long(PROMPT, long, max_words=56) == []
    # The first sentence stays even when it alone is too long.
    (fix,) = synthetic.fix_too_long(PROMPT, long, max_words=3)
    assert _apply([fix], long) == sentence


def _rules(tmp_path, body: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(body)
    return str(path)


def test_fixer_rules_trace_and_per_fault_recall(tmp_path):
    text = "The small train waits under the green street. The quiet river rests near the old bridge."
    editor = RuleEditor(RuleEditorConfig(rules=str(GLOBAL_RULES)))
    edited, trace = editor.apply_traced(text, PROMPT)
    assert trace.get("off-topic-nouns") == {"fixed": 1, "delta_words": 0}
    assert editor.explain(PROMPT, text) == trace and editor.apply(text, PROMPT) == edited
    # recall 0 on the rule: the fault is seen and never fixed; the editor's recall multiplies the rule's.
    never = _rules(tmp_path, "- {name: offtopic, fixer: 'fgrlhf.envs.synthetic:fix_off_topic_nouns', recall: 0.0}\n")
    assert RuleEditor(RuleEditorConfig(rules=never)).apply_traced(text, PROMPT) == (text, {})
    always = _rules(tmp_path, "- {name: offtopic, fixer: 'fgrlhf.envs.synthetic:fix_off_topic_nouns'}\n")
    assert RuleEditor(RuleEditorConfig(rules=always, recall=0.0)).apply(text, PROMPT) == text
    assert RuleEditor(RuleEditorConfig(rules=always)).apply(text, PROMPT) != text


def test_rule_recall_is_calibrated_per_fault(tmp_path):
    rules = _rules(tmp_path, "- {name: stutter, pattern: '\\b(\\w+) \\1\\b', replacement: '\\1', recall: 0.3}\n")
    editor = RuleEditor(RuleEditorConfig(rules=rules, recall=0.5))
    texts = [f"item {i}: the the cat" for i in range(2000)]
    share = sum(editor.apply(t) != t for t in texts) / len(texts)
    assert share == pytest.approx(0.15, abs=0.03)  # 0.3 × 0.5


def test_bad_fixer_rules_name_the_rule(tmp_path):
    for body, message in [
        ("- {name: gone, fixer: 'fgrlhf.envs.synthetic:no_such_fixer'}\n", r"rule 0 \(gone\): fixer .*no_such_fixer"),
        ("- {name: form, fixer: 'no colon'}\n", r"rule 0 \(form\): fixer 'no colon': expected 'module:function'"),
        (
            "- {name: opt, fixer: 'fgrlhf.envs.synthetic:fix_too_long', options: {max_wrds: 3}}\n",
            r"rule 0 \(opt\): options \['max_wrds'\] do not fit",
        ),
        (
            "- {name: r, fixer: 'fgrlhf.envs.synthetic:fix_too_long', options: {max_words: 3}, recall: 2}\n",
            r"rule 0: recall",
        ),
    ]:
        with pytest.raises(ConfigError, match=message):
            RuleEditor(RuleEditorConfig(rules=_rules(tmp_path, body)))


def test_a_fixer_that_cannot_read_the_prompt_fails_only_that_item():
    editor = RuleEditor(RuleEditorConfig(rules=str(GLOBAL_RULES)))
    with pytest.raises(PermanentError, match="not a synthetic-env prompt"):
        asyncio.run(editor.edit("Tell me a joke.", "The quiet river rests."))


def test_global_annotator_raises_gold_with_grammar_words_only():
    prompts = synthetic.split_prompts()[0]
    rng = random.Random(3)
    pairs = [(p, synthetic.sample_response(p, rng)) for p in prompts for _ in range(2)]
    editor = RuleEditor(RuleEditorConfig(rules=str(GLOBAL_RULES)))
    edited = [editor.apply(text, prompt) for prompt, text in pairs]
    before = synthetic.gold_reward([p for p, _ in pairs], [t for _, t in pairs])
    after = synthetic.gold_reward([p for p, _ in pairs], edited)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.3
    assert all(a >= b - 1e-9 for a, b in zip(after, before))
    assert all(set(words(e)) <= GRAMMAR for e in edited)  # in-distribution: no edit-only words


def test_edit_run_reports_fixes_per_fault(tmp_path):
    prompts = synthetic.split_prompts()[0][:12]
    rng = random.Random(5)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": p, "chosen": "x", "rejected": synthetic.sample_response(p, rng)}) + "\n"
            for p in prompts
        )
    )
    cfg = EditConfig(editor="rule", tokenizer="tiny", rule=RuleEditorConfig(rules=str(GLOBAL_RULES)))
    out = tmp_path / "edits.jsonl"
    summary = run_edit(cfg, pairs, out, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all("fixes" in r for r in records)
    expected: dict[str, list[int]] = {}
    for record in records:
        if record["status"] == "edited":
            for fault, done in record["fixes"].items():
                total = expected.setdefault(fault, [0, 0])
                total[0] += done["fixed"]
                total[1] += done["delta_words"]
    assert expected and {f: [t["fixed"], t["delta_words"]] for f, t in summary.fixes.items()} == expected
    assert "fixes in edited records" in summary.render()
    report = summary.as_dict()["fixes"]
    assert all(t["mean_delta_words"] == pytest.approx(t["delta_words"] / t["fixed"], abs=1e-3) for t in report.values())
