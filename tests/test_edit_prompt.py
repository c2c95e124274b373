"""The minimal-edit prompt v2 and its version in the edit cache key."""

import json

from fgrlhf.editing import editors, pipeline
from fgrlhf.editing.config import EditConfig
from fgrlhf.editing.editors import Editor, EditReply
from fgrlhf.editing.prompts import PROMPT_VERSION, user_message
from fgrlhf.editing.retry import Usage


def test_v2_prompt_asks_to_follow_the_instruction_and_explain_missing_steps():
    assert PROMPT_VERSION == "minimal-edit-v2"
    message = user_message("Explain TCP.", "TCP is a protocol.")
    assert "follow the instruction" in message and "brief explanation" in message
    assert "Change as few words as possible" in message
    assert "<instruction>\nExplain TCP.\n</instruction>" in message


class CountingEditor(Editor):
    name = "counting"
    model = "m"
    deterministic = True

    def __init__(self):
        self.calls = 0

    async def edit(self, instruction: str, text: str) -> EditReply:
        self.calls += 1
        return EditReply(text.replace("teh", "the"), Usage(1, 1))


def test_cached_edits_are_not_reused_across_prompt_versions(tmp_path, monkeypatch):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "teh cat sat on teh mat today"}) + "\n")
    cfg = EditConfig(editor="rule", tokenizer="tiny", cache=str(tmp_path / "cache.sqlite"))
    editor = CountingEditor()
    pipeline.run_edit(cfg, pairs, tmp_path / "a.jsonl", progress=False, editor=editor)
    pipeline.run_edit(cfg, pairs, tmp_path / "b.jsonl", progress=False, editor=editor)
    assert editor.calls == 1  # same version: served from the cache
    for module in (pipeline, editors):  # the cache key's version field and the editor fingerprint
        monkeypatch.setattr(module, "PROMPT_VERSION", "minimal-edit-v1")
    summary = pipeline.run_edit(cfg, pairs, tmp_path / "c.jsonl", progress=False, editor=editor)
    assert editor.calls == 2 and summary.from_cache == 0
    record = json.loads((tmp_path / "c.jsonl").read_text())
    assert record["prompt_version"] == "minimal-edit-v1" and record["edited"] == "the cat sat on the mat today"
