"""Bounded work (issue 11 §3): the rule editor is near-linear in the response length, its linear fixer finds
exactly the regex's matches, oversized inputs are refused at load time, and Ctrl-C stops a command with
one line and exit 130."""

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fgrlhf.data.loading import DataError, load_pairs, max_field_bytes
from fgrlhf.editing.config import RuleEditorConfig
from fgrlhf.editing.editors import RuleEditor
from fgrlhf.editing.fixers import repeated_sentences
from tests.helpers import edit_command, write_pairs

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = [
    ROOT / "configs" / f"edit-rules-{name}.yaml"
    for name in ("default", "alpaca-sim", "synthetic", "synthetic-delete", "synthetic-global")
]
MB = 1_000_000


def _repeat(piece: str, size: int = MB) -> str:
    return (piece * (size // len(piece) + 1))[:size]


# Shapes that made some shipped rule quadratic (every start position scanning to a terminator that never
# comes, or a whitespace run rescanned from each of its positions): each took from minutes to hours at 1 MB.
HOSTILE = {
    "one sentence without a full stop": _repeat("word "),
    "whitespace": _repeat(" \n \t "),
    "capitalised words": _repeat("The Cat "),
    "a phrase the rules delete, repeated without a full stop": _repeat("I hope this helps you feel free to ask "),
    "a numbered item with a long gap": "1. " + " " * (MB // 2) + "x" * (MB // 2),
    "distinct sentences": "".join(f"Abcdefghijklmnopqrstuvw number {i}. " for i in range(MB // 30))[:MB],
}


@pytest.mark.parametrize("rules", RULE_FILES, ids=lambda path: path.stem)
def test_rule_editor_is_near_linear_on_1mb_responses(rules):
    editor = RuleEditor(RuleEditorConfig(rules=str(rules)))
    # The global annotator's fixers read the instruction: give them a synthetic-env prompt.
    instruction = "Write about the river, the fish and the bridge." if "global" in rules.name else ""
    for shape, text in HOSTILE.items():
        start = time.perf_counter()
        editor.apply(text, instruction=instruction)
        # Linear: about a second on an idle core; the quadratic rules took from minutes to hours here.
        assert time.perf_counter() - start < 20.0, (rules.name, shape)


def test_partial_recall_draws_do_not_rehash_the_response_per_match():
    # 35k matches in 1 MB: hashing the whole response for each draw was 3.5·10^10 bytes.
    text = "".join(f"Item {i} is basically fine. " for i in range(MB // 28))
    start = time.perf_counter()
    edited = RuleEditor(RuleEditorConfig(recall=0.5)).apply(text)
    assert time.perf_counter() - start < 20.0
    fixed = (text.count("basically") - edited.count("basically")) / text.count("basically")
    assert 0.45 < fixed < 0.55


REPEATED_SENTENCE = re.compile(r"([^.!?\n]+[.!?])(?:\s+\1)+")


def test_repeated_sentences_fixer_finds_exactly_the_regex_matches():
    rng = random.Random(0)
    pieces = [
        "a",
        "b",
        " ",
        "  ",
        "\t",
        "\n",
        ".",
        "!",
        "?",
        "ab",
        "a b.",
        " a.",
        "A b. ",
        "x\u00a0",
        "Paris is large.",
    ]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 14)))
        if rng.random() < 0.5:  # a tail said again, with varied whitespace between
            tail = text[rng.randrange(len(text) + 1) :]
            text += rng.choice([" ", "  ", "\n", " \n ", "\t"]) + tail + rng.choice(["", " ", " " + tail])
        expected = [(m.start(), m.end(), m.group(1)) for m in REPEATED_SENTENCE.finditer(text)]
        assert repeated_sentences("", text) == expected, repr(text)


def test_repeated_sentences_fixer_is_linear():
    for text in (_repeat(". "), _repeat("a. b. "), _repeat("Paris is large. "), "a." + " " * MB + "a."):
        start = time.perf_counter()
        repeated_sentences("", text)
        assert time.perf_counter() - start < 20.0


def test_oversized_field_is_refused_at_load_with_file_line_field(tmp_path, monkeypatch):
    monkeypatch.delenv("FGRLHF_MAX_FIELD_BYTES", raising=False)
    assert max_field_bytes() == 256 * 1024
    pairs = write_pairs(tmp_path / "pairs.jsonl", ["fine", "é" * (128 * 1024 + 1)])  # 2 bytes a character
    with pytest.raises(DataError, match=r"pairs.jsonl:2: field 'rejected' is larger than 262144 bytes \(262146"):
        load_pairs(pairs)
    assert len(load_pairs(pairs, skip_invalid=True)) == 1
    assert len(load_pairs(pairs, max_bytes=300_000)) == 2  # a loader argument
    monkeypatch.setenv("FGRLHF_MAX_FIELD_BYTES", "0")  # 0 = no limit
    assert len(load_pairs(pairs)) == 2
    monkeypatch.setenv("FGRLHF_MAX_FIELD_BYTES", "many")
    with pytest.raises(DataError, match="FGRLHF_MAX_FIELD_BYTES"):
        load_pairs(pairs)


def test_5mb_response_is_refused_at_once_and_1mb_is_edited_and_inspected_with_a_raised_limit(
    tmp_path, monkeypatch, capsys
):
    from fgrlhf.cli import main as cli_main

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # The default limit; set here so that monkeypatch restores what --max-field-bytes changes in-process.
    monkeypatch.setenv("FGRLHF_MAX_FIELD_BYTES", str(256 * 1024))
    # A 5 MB response hung `edit --editor rule` and `inspect-edits` for minutes: now refused at load time.
    huge = write_pairs(tmp_path / "huge.jsonl", ["Fine. " * (5 * MB // 6)])
    assert cli_main(edit_command(huge, tmp_path / "o.jsonl", "rule", "tokenizer=tiny")) == 2
    assert "huge.jsonl:1: field 'rejected' is larger than 262144 bytes" in capsys.readouterr().err

    # Allowed with --max-field-bytes, a 1 MB response (hostile shapes end to end) is edited and inspected
    # in linear time: the rule editor, the token diff of the statistics and inspect-edits' highlighted diff.
    text = (
        HOSTILE["one sentence without a full stop"][: MB // 2]
        + " As an AI, I think it is basically fine. "
        + HOSTILE["distinct sentences"][: MB // 2]
    )
    pairs = write_pairs(tmp_path / "pairs.jsonl", [text])
    out = tmp_path / "edits.jsonl"
    start = time.perf_counter()
    assert (
        cli_main(
            edit_command(
                pairs, out, "rule", "--max-field-bytes", str(2 * MB), "tokenizer=tiny", "max_changed_fraction=1.0"
            )
        )
        == 0
    )
    record = json.loads(out.read_text(encoding="utf-8"))
    assert record["status"] == "edited" and record["edit_distance"] > 0
    assert (
        cli_main(
            ["inspect-edits", str(out), "--max-field-bytes", str(2 * MB), "--tokenizer", "tiny", "--examples", "1"]
        )
        == 0
    )
    assert time.perf_counter() - start < 120  # seconds on an idle machine


def _cache_rows(path: Path) -> int:
    import sqlite3

    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as db:
        try:
            return db.execute("SELECT COUNT(*) FROM edits").fetchone()[0]
        except sqlite3.OperationalError:  # created, table not yet
            return 0


def _interrupt(command: list[str], ready, log: Path, env: dict | None = None) -> tuple[int, str, float]:
    """Run ``fgrlhf COMMAND`` (stdout to ``log``), send SIGINT once ``ready()``; exit status, stderr and
    seconds from the signal to the exit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    with log.open("w") as out:
        # SIGINT back to its default first, as in a terminal: a suite started in the background (`cmd &`,
        # CI runners) passes SIGINT down ignored, and Python then never raises KeyboardInterrupt.
        start = (
            "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "sys.argv[0] = 'fgrlhf'; runpy.run_module('fgrlhf.cli', run_name='__main__')"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", start, *command], stdout=out, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            deadline = time.monotonic() + 300
            while not ready() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, f"finished before the interrupt: {proc.communicate()[1]}"
            sent = time.monotonic()
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=120)
            return proc.returncode, err, time.monotonic() - sent
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _assert_one_line_interrupt(code: int, err: str, seconds: float, hint: str) -> None:
    lines = err.strip().splitlines()
    assert code == 130 and "Traceback" not in err, err
    assert lines[-1].startswith("interrupted: ") and hint in lines[-1], err
    assert sum(line.startswith("interrupted") for line in lines) == 1
    assert seconds < 20  # a few seconds on an idle machine


@pytest.mark.slow
def test_ctrl_c_during_rule_edits_exits_130_with_one_line_and_keeps_completed_items(tmp_path):
    # 100 responses of 100 kB each: seconds of pure-Python and regex work, interrupted in the middle.
    pairs = write_pairs(
        tmp_path / "pairs.jsonl", [f"Item {i}. " + _repeat("It is basically fine. ", 100_000) for i in range(100)]
    )
    cache = tmp_path / "cache.sqlite"
    code, err, seconds = _interrupt(
        edit_command(
            pairs, tmp_path / "o.jsonl", "rule", "--concurrency", "1", "--cache", str(cache), "tokenizer=tiny"
        ),
        lambda: _cache_rows(cache) >= 2,
        tmp_path / "out.log",
    )
    _assert_one_line_interrupt(code, err, seconds, "re-run the same command")
    assert 2 <= _cache_rows(cache) < 100 and not (tmp_path / "o.jsonl").exists()


@pytest.mark.slow
def test_ctrl_c_during_api_edits_exits_130_with_one_line_and_keeps_completed_items(tmp_path):
    from tests.fake_messages_server import FakeMessagesServer

    key = "sk-ant-test-interrupt"
    pairs = write_pairs(tmp_path / "pairs.jsonl", [f"Answer {i} mentions teh topic." for i in range(20)])
    cache = tmp_path / "cache.sqlite"
    with FakeMessagesServer(key, latency_s=0.3) as server:
        code, err, seconds = _interrupt(
            edit_command(
                pairs, tmp_path / "o.jsonl", "anthropic", "--concurrency", "1", "--cache", str(cache), "tokenizer=tiny"
            ),
            lambda: _cache_rows(cache) >= 2,
            tmp_path / "out.log",
            env={"ANTHROPIC_API_KEY": key, "ANTHROPIC_BASE_URL": server.base_url},
        )
    _assert_one_line_interrupt(code, err, seconds, "re-run the same command")
    assert 2 <= _cache_rows(cache) < 20


@pytest.mark.slow
def test_ctrl_c_during_inspect_edits_exits_130_with_one_line(tmp_path):
    # Rendering 200 highlighted diffs of 50 kB responses: interrupted once the statistics are printed.
    edits = tmp_path / "edits.jsonl"
    text = _repeat("It is basically fine. Paris is large. ", 50_000)
    edits.write_text(
        "".join(
            json.dumps(
                {
                    "prompt": "Q?",
                    "original": text,
                    "edited": text.replace("basically ", ""),
                    "status": "edited",
                    "changed_fraction": 0.1,
                }
            )
            + "\n"
            for _ in range(200)
        ),
        encoding="utf-8",
    )
    log = tmp_path / "out.log"
    code, err, seconds = _interrupt(
        ["inspect-edits", str(edits), "--tokenizer", "tiny", "--examples", "200"],
        lambda: "changed fraction" in log.read_text(),
        log,
    )
    _assert_one_line_interrupt(code, err, seconds, "re-run the same command")


def test_interrupt_dropped_inside_a_destructor_is_delivered_again():
    # What failed the inspect-edits Ctrl-C test now and then: SIGINT arrived while regex's Group.__del__ ran,
    # Python printed "Exception ignored in ..." and dropped it, and the command ran to its end (exit 0).
    from fgrlhf.cli import redeliver_swallowed_interrupts

    class DroppedInDestructor:
        def __del__(self):
            raise KeyboardInterrupt

    # SIGINT handled as in a terminal, also when the suite runs in the background (SIGINT ignored).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), redeliver_swallowed_interrupts():
            DroppedInDestructor()  # collected at once: its KeyboardInterrupt is unraisable
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # the redelivered interrupt lands in this loop
                pass
    finally:
        signal.signal(signal.SIGINT, previous)
