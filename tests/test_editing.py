"""fgrlhf edit / inspect-edits: the Claude editor end to end through the real anthropic SDK against a local
fake Messages API with injected faults, crash-resume, the rule and HF editors, input validation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fgrlhf.cli import main as cli_main
from fgrlhf.config import ConfigError, load_config
from fgrlhf.editing.cache import EditCache
from fgrlhf.editing.config import EditConfig, RetryConfig, RuleEditorConfig
from fgrlhf.editing.edit_report import diff_segments
from fgrlhf.editing.editors import RuleEditor
from fgrlhf.editing.pipeline import REJECT_EMPTY, REJECT_TOO_LARGE, classify, run_edit
from fgrlhf.editing.prompts import parse_reply
from fgrlhf.editing.retry import RetryPolicy, parse_retry_after
from fgrlhf.models import load_tokenizer
from tests.helpers import assert_key_absent, edit_command, fake_anthropic

KEY = "sk-ant-test-SECRET-123"
FAST_RETRY = ["retry.initial_backoff_s=0.01", "retry.max_backoff_s=0.05", "tokenizer=tiny"]

# text -> expected status; the fake server fixes "teh" and reads the fault markers.
CASES = {
    "I saw teh cat on the mat, and it looked at me.": "edited",
    "The sky is blue.": "unchanged",
    "Water boils at 100 C at sea level, says teh book. [[faults:429]]": "edited",
    "Paris is teh capital of France and a large city. [[faults:500,529]]": "edited",
    "Rome was not built in a day, as teh saying goes. [[faults:slow]]": "edited",
    "Cats sleep a lot during teh day and hunt at night. [[faults:malformed]]": "edited",
    "Dogs bark at teh postman every single morning. [[always-malformed]]": "failed: malformed reply",
    "A short answer to teh question. [[rewrite]]": REJECT_TOO_LARGE,
    "Some response. [[empty]]": REJECT_EMPTY,
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def server(monkeypatch):
    with fake_anthropic(monkeypatch, KEY, retry_after_s=1.0, slow_s=1.5) as srv:
        yield srv


def _write_pairs(path: Path, texts) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        for index, text in enumerate(texts):
            handle.write(
                json.dumps({"prompt": f"Question {index}?", "chosen": "ok", "rejected": text, "id": index}) + "\n"
            )
    return path


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_claude_editor_faults_retries_cache(tmp_path, server):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", CASES)
    out = tmp_path / "edits.jsonl"
    cfg = load_config(EditConfig, None, ["editor=anthropic", "concurrency=4", "anthropic.timeout_s=0.5", *FAST_RETRY])
    summary = run_edit(cfg, pairs, out, progress=False)

    records = _read(out)
    assert [r["status"] for r in records] == list(CASES.values())  # every input accounted for, in order
    first = records[0]
    assert first["id"] == 0 and first["chosen"] == "ok" and first["original"] == first["rejected"]
    assert first["edited"] == first["original"].replace("teh", "the")
    assert first["edit_distance"] >= 1 and 0 < first["changed_fraction"] <= 0.5
    assert first["editor"] == "anthropic" and first["model"] == cfg.anthropic.model
    assert summary.counters.retries == {
        "rate_limit": 1,
        "server_error": 1,
        "overloaded": 1,
        "timeout": 1,
        "malformed": 3,
    }  # always-malformed: 3 attempts = 2 retries
    assert summary.counters.requests == server.count() == len(CASES) + 7
    assert summary.counters.input_tokens > 0 and summary.counters.output_tokens > 0 and summary.cost_usd > 0

    # retry-after honoured: the 429'd item came back no sooner than the server asked.
    rate_limited = server.requests_for(list(CASES)[2])
    assert [r.outcome for r in rate_limited] == ["429", "ok"]
    assert rate_limited[1].started - rate_limited[0].started >= 1.0

    # Re-run: completed items (edited/unchanged/rejected) cost nothing; the failed one is retried.
    before = server.count()
    again = run_edit(cfg, pairs, out, progress=False)
    assert server.count() - before == 3 == again.counters.requests
    assert {r.key for r in server.log[before:]} == {server.requests_for(list(CASES)[6])[0].key}
    assert again.from_cache == len(CASES) - 1 and [r["status"] for r in _read(out)] == list(CASES.values())
    assert_key_absent(tmp_path, KEY)


@pytest.mark.slow
def test_killed_run_resumes_without_resending(tmp_path, server):
    server.latency_s = 0.3
    texts = [f"Answer number {i} mentions teh topic once." for i in range(10)]
    pairs = _write_pairs(tmp_path / "pairs.jsonl", texts)
    out, cache, log = tmp_path / "edits.jsonl", tmp_path / "cache.sqlite", tmp_path / "run.log"
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.base_url}
    command = [
        sys.executable,
        "-m",
        "fgrlhf.cli",
        "-v",
        *edit_command(pairs, out, "anthropic", "--concurrency", "1", "--cache", str(cache), *FAST_RETRY),
    ]
    with log.open("wb") as handle:
        proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while server.count("ok") < 4 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    reader = EditCache(cache)
    done = len(reader)
    reader.close()
    assert 3 <= done < len(texts)

    before = server.count()
    cfg = load_config(EditConfig, None, ["editor=anthropic", f"cache={cache}", *FAST_RETRY])
    summary = run_edit(cfg, pairs, out, progress=False)
    resent = [entry.key for entry in server.log[before:]]
    assert len(resent) == len(set(resent)) == len(texts) - done == summary.counters.requests
    assert summary.from_cache == done and [r["status"] for r in _read(out)] == ["edited"] * len(texts)
    assert_key_absent(tmp_path, KEY)


def test_authentication_failure_stops_the_run(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    pairs = _write_pairs(tmp_path / "pairs.jsonl", list(CASES)[:2])
    code = cli_main(edit_command(pairs, tmp_path / "o.jsonl", "anthropic", *FAST_RETRY))
    assert code == 3 and "HTTP 401" in capsys.readouterr().err
    assert server.count("401") <= 2  # no retries on a bad key


def test_rule_editor_recall_is_deterministic_and_calibrated():
    texts = [f"Item {i} is basically fine. It is important to note that it works." for i in range(400)]
    full = RuleEditor(RuleEditorConfig(recall=1.0))
    assert full.apply(texts[0]) == "Item 0 is fine. Note that it works."
    assert all(RuleEditor(RuleEditorConfig(recall=0.0)).apply(t) == t for t in texts[:20])

    half = RuleEditor(RuleEditorConfig(recall=0.5))
    results = [half.apply(t) for t in texts]
    assert results == [RuleEditor(RuleEditorConfig(recall=0.5)).apply(t) for t in reversed(texts)][::-1]
    fixed_filler = sum("basically" not in r for r in results) / len(texts)
    fixed_note = sum("important" not in r for r in results) / len(texts)
    assert 0.4 < fixed_filler < 0.6 and 0.4 < fixed_note < 0.6
    reseeded = [RuleEditor(RuleEditorConfig(recall=0.5, seed=1)).apply(t) for t in texts]
    assert reseeded != results


def test_default_rules_make_plausible_minimal_edits():
    editor = RuleEditor(RuleEditorConfig())
    text = (
        "As an AI language model, I can say the the capital is Paris. Paris is large. Paris is large.\n"
        "It is worth noting that it is basically old. If you have more questions, feel free to ask! Bye."
    )
    assert editor.apply(text) == "I can say the capital is Paris. Paris is large.\nNote that it is old. Bye."
    assert editor.apply("As an AI, the answer is 4.") == "As an AI, the answer is 4."  # no lower-case start
    assert editor.apply("He had had enough. Code:  x  = 1 ;") == "He had had enough. Code:  x  = 1 ;"


def test_bad_rules_file_names_rule(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("- {name: ok, pattern: 'a', replacement: 'b'}\n- {name: bad, pattern: '(x', replacement: ''}\n")
    with pytest.raises(ConfigError, match=r"rules.yaml: rule 1 \(bad\): bad regex"):
        RuleEditor(RuleEditorConfig(rules=str(rules)))
    rules.write_text("- {name: ref, pattern: '(x)', replacement: '\\2'}\n")
    with pytest.raises(ConfigError, match="rule 0"):
        RuleEditor(RuleEditorConfig(rules=str(rules)))
    rules.write_text("- {name: nofield, pattern: 'x'}\n")
    with pytest.raises(ConfigError, match="rule 0: replacement"):
        RuleEditor(RuleEditorConfig(rules=str(rules)))


@pytest.mark.slow
def test_hf_editor_tiny_model_fails_honestly(tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", ["One teh.", "Two teh."])
    cfg = load_config(EditConfig, None, ["editor=hf", "hf.model=tiny", "hf.max_new_tokens=4", "tokenizer=tiny"])
    summary = run_edit(cfg, pairs, tmp_path / "o.jsonl", progress=False)
    assert [r["status"] for r in _read(tmp_path / "o.jsonl")] == ["failed: malformed reply"] * 2
    assert summary.counters.requests == 2  # greedy decoding repeats itself: no malformed retries
    assert summary.counters.output_tokens == 8


@pytest.mark.parametrize(
    "line, message",
    [
        (json.dumps({"prompt": "p", "chosen": "c"}).encode(), "pairs.jsonl:2: missing field 'rejected'"),
        (
            json.dumps({"prompt": "p", "chosen": "c", "rejected": 5}).encode(),
            "pairs.jsonl:2: field 'rejected' must be a string",
        ),
        (
            json.dumps({"prompt": "p", "chosen": "c", "rejected": " "}).encode(),
            "pairs.jsonl:2: field 'rejected' is empty",
        ),
        (b'{"prompt": "p", ', "pairs.jsonl:2: not valid JSON"),
        (b'{"prompt": "\xff"}', "pairs.jsonl:2: line is not valid UTF-8"),
    ],
)
def test_edit_cli_reports_bad_input(tmp_path, capsys, line, message):
    good = json.dumps(
        {
            "prompt": "p",
            "chosen": "c",
            "rejected": "Paris is the capital of France and a very very old city with a long history.",
        }
    ).encode()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(b"\n".join([good, line, good]) + b"\n")
    args = edit_command(pairs, tmp_path / "o.jsonl", "rule", "tokenizer=tiny")
    assert cli_main(args) == 2
    assert message in capsys.readouterr().err
    if "missing" in message:  # one --skip-invalid run is enough to check the counting
        assert cli_main([*args, "--skip-invalid"]) == 0
        assert "skipped invalid input records: 1" in capsys.readouterr().out
        assert [r["status"] for r in _read(tmp_path / "o.jsonl")] == ["edited", "edited"]


def test_single_responses_and_config_errors(tmp_path, capsys):
    responses = tmp_path / "r.jsonl"
    responses.write_text(
        json.dumps({"prompt": "p", "response": "Great question! The <b>answer</b> is 4, see see."}) + "\n"
    )
    out = tmp_path / "o.jsonl"
    base = edit_command(responses, out, "rule", "tokenizer=tiny")
    assert cli_main([*base, "--model", "x"]) == 2 and "--model does not apply" in capsys.readouterr().err
    assert (
        cli_main([*base, "retry.max_attemps=3"]) == 2 and "unknown key 'retry.max_attemps'" in capsys.readouterr().err
    )
    assert cli_main([*base, "max_changed_fraction=0.9"]) == 0
    record = _read(out)[0]
    assert record["source_field"] == "response" and record["edited"] == "The <b>answer</b> is 4, see."
    assert record["status"] == "edited"

    html = tmp_path / "e.html"
    assert cli_main(["inspect-edits", str(out), "--tokenizer", "tiny", "--html", str(html)]) == 0
    shown = capsys.readouterr().out
    assert "edited" in shown and "p50" in shown
    page = html.read_text()
    assert "&lt;b&gt;answer&lt;/b&gt;" in page and "<b>answer" not in page
    assert "<del>" in page and "<del> see</del>" in page

    segments = diff_segments(load_tokenizer("tiny"), record["original"], record["edited"])
    assert "".join(text for kind, text in segments if kind != "ins") == record["original"]
    assert "".join(text for kind, text in segments if kind != "del") == record["edited"]


def test_classify_statuses():
    assert classify([1, 2, 3, 4], [1, 2, 3, 4], "x", 0.5)[0] == "unchanged"
    assert classify([1, 2, 3, 4], [1, 2, 9, 4], "x", 0.5) == (
        "edited",
        {"original_tokens": 4, "edited_tokens": 4, "edit_distance": 1, "changed_fraction": 0.25},
    )
    assert classify([1, 2, 3, 4], [7, 8, 9, 4], "x", 0.5)[0] == REJECT_TOO_LARGE
    assert classify([1, 2], [], "  ", 0.5)[0] == REJECT_EMPTY


def test_retry_after_parsing_and_backoff():
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    in_a_minute = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))
    assert 55 < parse_retry_after({"retry-after": in_a_minute}) <= 60
    assert parse_retry_after({}) is None
    policy = RetryPolicy(RetryConfig(initial_backoff_s=1.0, max_backoff_s=4.0, jitter=0.5))
    delays = [policy.delay(n, None) for n in range(1, 6)]
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0 and all(2.0 <= d <= 4.0 for d in delays[2:])
    assert 7.0 <= policy.delay(1, 7.0) <= 7.7


def test_parse_reply():
    assert parse_reply("x <edited_response>\nFixed.\n</edited_response> y") == "Fixed."
    assert parse_reply("<edited_response>a\n\nb</edited_response>") == "a\n\nb"
    assert parse_reply("no tags") is None and parse_reply("<edited_response>cut off") is None
