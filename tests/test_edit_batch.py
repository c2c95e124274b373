"""fgrlhf edit --editor anthropic --batch: the Message Batches path end to end through the real anthropic SDK
against the fake server's batch endpoints: chunking, join by custom_id, resubmission of errored / expired /
malformed items, statuses when retries run out, equality with the streaming mode, and re-attachment to the
batches of a killed run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fgrlhf.cli import main as cli_main
from fgrlhf.config import load_config
from fgrlhf.editing.cache import CacheKey, EditCache, content_hash
from fgrlhf.editing.config import EditConfig
from fgrlhf.editing.pipeline import REJECT_EMPTY, REJECT_TOO_LARGE, run_edit
from fgrlhf.editing.prompts import PROMPT_VERSION
from tests.helpers import edit_command, fake_anthropic
from tests.test_editing import _read, _write_pairs

KEY = "sk-ant-test-SECRET-456"
FAST = ["retry.initial_backoff_s=0.01", "retry.max_backoff_s=0.05", "tokenizer=tiny", "batch.poll_interval_s=0.02"]
MODEL = EditConfig().anthropic.model
FINGERPRINT = f"{PROMPT_VERSION}|max_tokens={EditConfig().anthropic.max_tokens}"

# text -> final status, in either mode; the fake server fixes "teh" and reads the fault markers.
CASES = {
    "I saw teh cat on the mat, and it looked at me.": "edited",
    "The sky is blue.": "unchanged",
    "Water boils at 100 C at sea level, says teh book. [[faults:expired]]": "edited",
    "Paris is teh capital of France and a large city. [[faults:500]]": "edited",
    "Cats sleep a lot during teh day and hunt at night. [[faults:malformed]]": "edited",
    "Dogs bark at teh postman every single morning. [[always-malformed]]": "failed: malformed reply",
    "A short answer to teh question. [[rewrite]]": REJECT_TOO_LARGE,
    "Some response. [[empty]]": REJECT_EMPTY,
    "A request the API refuses, says teh log. [[faults:400]]": "failed: HTTP 400 invalid_request_error",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def server(monkeypatch):
    with fake_anthropic(monkeypatch, KEY, retry_after_s=0.05) as srv:
        yield srv


def _custom_id(index: int, text: str) -> str:
    return content_hash(f"Question {index}?", text, FINGERPRINT)


def _batch_cfg(tmp_path: Path, *overrides: str) -> EditConfig:
    return load_config(
        EditConfig,
        None,
        ["editor=anthropic", "batch.enabled=true", f"cache={tmp_path / 'c.sqlite'}", *FAST, *overrides],
    )


def test_batch_cli_matches_streaming(tmp_path, monkeypatch, capsys):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", CASES)
    common = ["edit", "--input", str(pairs), "--editor", "anthropic", "--no-progress", *FAST]
    with fake_anthropic(
        monkeypatch, KEY, retry_after_s=0.05
    ) as streamed:  # its own server: the fault schedules count attempts per item
        code_streamed = cli_main([*common, "--output", str(tmp_path / "s.jsonl")])
    out_streamed = capsys.readouterr().out
    assert streamed.batches == {} and streamed.count() == len(CASES) + 4  # 500 once, malformed 3 times
    with fake_anthropic(monkeypatch, KEY, retry_after_s=0.05) as server:
        code_batch = cli_main([*common, "--output", str(tmp_path / "b.jsonl"), "--batch", "batch.chunk_size=4"])
    out_batch = capsys.readouterr().out

    records = _read(tmp_path / "b.jsonl")
    assert [r["status"] for r in records] == list(CASES.values())
    assert records == _read(tmp_path / "s.jsonl")  # same records, field for field
    assert code_batch == code_streamed  # so the same exit-code rules apply
    status_line = [line for line in out_batch.splitlines() if line.startswith("status:")]
    assert status_line and status_line == [line for line in out_streamed.splitlines() if line.startswith("status:")]
    assert "retries 5 (expired 1, malformed 3, server_error 1)" in out_batch  # always-malformed: 2 retries

    # Chunked 4 + 4 + 1 in input order, then only the failed items resubmitted, each after its batch ended.
    batches = list(server.batches.values())
    ids = [_custom_id(index, text) for index, text in enumerate(CASES)]
    assert [b.custom_ids for b in batches[:3]] == [ids[:4], ids[4:8], ids[8:]]
    retried = {ids[i] for i in (2, 3, 4, 5)}
    assert all(set(b.custom_ids) <= retried for b in batches[3:])
    assert sum(len(b.requests) for b in batches) == len(CASES) + 5 == server.count()
    assert [r.outcome for r in server.requests_for(list(CASES)[2])] == ["expired", "ok"]
    assert [r.outcome for r in server.requests_for(list(CASES)[3])] == ["500", "ok"]
    assert [r.outcome for r in server.requests_for(list(CASES)[8])] == ["400"]  # invalid: never resubmitted
    assert all(b.results is not None for b in batches)  # every batch polled to the end and collected
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or KEY.encode() not in path.read_bytes(), f"API key leaked into {path}"


def test_batch_retries_exhausted_and_rerun(tmp_path, server):
    cases = {
        "Alpha mentions teh topic. [[faults:expired,expired]]": "failed: expired (2 attempts)",
        "Beta mentions teh topic. [[faults:500,529]]": "failed: overloaded: HTTP 529 (2 attempts)",
        "Gamma mentions teh topic. [[faults:429,429]]": "failed: rate_limit: HTTP 429 (2 attempts)",
        "Delta mentions teh topic. [[faults:malformed,malformed]]": "failed: malformed reply",
        "Epsilon mentions teh topic. [[faults:canceled]]": "edited",
        "Zeta mentions teh topic.": "edited",
    }
    pairs = _write_pairs(tmp_path / "pairs.jsonl", cases)
    out = tmp_path / "edits.jsonl"
    cfg = _batch_cfg(tmp_path, "retry.max_attempts=2", "retry.malformed_attempts=2")
    summary = run_edit(cfg, pairs, out, progress=False)
    assert [r["status"] for r in _read(out)] == list(cases.values())
    assert summary.statuses["edited"] == 2 and sum(summary.statuses.values()) == len(cases)
    assert summary.counters.retries == {"expired": 1, "server_error": 1, "rate_limit": 1, "malformed": 1, "canceled": 1}
    assert summary.counters.requests == len(cases) + 5 == server.count()
    assert len(server.batches) == 2 and summary.cost_usd > 0

    # A re-run resubmits only the failed items (their fault schedules are spent now), in one new batch.
    again = run_edit(cfg, pairs, out, progress=False)
    assert again.from_cache == 2 and [r["status"] for r in _read(out)] == ["edited"] * len(cases)
    assert len(server.batches) == 3
    assert set(list(server.batches.values())[-1].custom_ids) == {_custom_id(i, t) for i, t in enumerate(cases) if i < 4}
    # Everything cached now: nothing is created or polled.
    before = sum(b.polls for b in server.batches.values())
    third = run_edit(cfg, pairs, out, progress=False)
    assert third.from_cache == len(cases) and third.counters.requests == 0
    assert len(server.batches) == 3 and sum(b.polls for b in server.batches.values()) == before


@pytest.mark.slow
def test_killed_run_reattaches_without_a_new_batch(tmp_path, monkeypatch):
    texts = [f"Answer number {i} mentions teh topic once." for i in range(6)]
    pairs = _write_pairs(tmp_path / "pairs.jsonl", texts)
    out, cache = tmp_path / "edits.jsonl", tmp_path / "c.sqlite"
    with fake_anthropic(
        monkeypatch, KEY, retry_after_s=0.05, batch_polls=10**6
    ) as server:  # never ends while the first run lives
        env = {**os.environ, "ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.base_url}
        command = [
            sys.executable,
            "-m",
            "fgrlhf.cli",
            *edit_command(pairs, out, "anthropic", "--batch", "--cache", str(cache), *FAST),
        ]
        with (tmp_path / "run.log").open("wb") as log:
            proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            deadline = time.monotonic() + 90
            # Polled at least twice: the batch id was stored (it is stored before the first poll).
            while (
                (not server.batches or next(iter(server.batches.values())).polls < 2)
                and proc.poll() is None
                and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert not out.exists() and len(server.batches) == 1, (tmp_path / "run.log").read_text()
        reader = EditCache(cache)
        scope = CacheKey("anthropic", MODEL, PROMPT_VERSION, "")
        assert list(reader.open_batches(scope)) == list(server.batches) and len(reader) == 0
        reader.close()

        server.batch_polls = 0  # the batch ends at the next poll
        summary = run_edit(_batch_cfg(tmp_path), pairs, out, progress=False)
        assert len(server.batches) == 1 and summary.counters.requests == 0  # re-attached, nothing re-paid
        assert summary.from_cache == 0 and [r["status"] for r in _read(out)] == ["edited"] * len(texts)
        assert summary.counters.output_tokens > 0  # the collected results' usage is reported
        reader = EditCache(cache)
        assert reader.open_batches(scope) == {} and len(reader) == len(texts)
        reader.close()


def test_lost_batch_duplicates_and_size_limit(tmp_path, server, capsys):
    texts = ["One mentions teh topic.", "Two mentions teh topic.", "Three mentions teh topic."]
    pairs = tmp_path / "pairs.jsonl"
    rows = [{"prompt": "Q?", "chosen": "ok", "rejected": text} for text in [*texts, texts[0]]]  # a duplicate
    pairs.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    ids = [content_hash("Q?", text, FINGERPRINT) for text in texts]
    # A batch recorded by an earlier run that the API no longer knows (deleted, or its results expired).
    seeded = EditCache(tmp_path / "c.sqlite")
    seeded.add_batch("msgbatch_gone", CacheKey("anthropic", MODEL, PROMPT_VERSION, ""), ids[:2])
    seeded.close()

    summary = run_edit(_batch_cfg(tmp_path, "batch.max_batch_bytes=1"), pairs, tmp_path / "o.jsonl", progress=False)
    records = _read(tmp_path / "o.jsonl")
    assert [r["status"] for r in records] == ["edited"] * 4 and records[3]["edited"] == records[0]["edited"]
    # One request per distinct item (the duplicate shares one), one per batch (over the size limit each).
    assert [b.custom_ids for b in server.batches.values()] == [[ids[2]], [ids[0]], [ids[1]]]
    assert summary.counters.requests == 3 == server.count()

    # --batch belongs to the Claude editor only: refused before anything is sent.
    code = cli_main(edit_command(pairs, tmp_path / "r.jsonl", "rule", "--batch", "tokenizer=tiny"))
    assert code == 2 and "--batch needs --editor anthropic" in capsys.readouterr().err


def test_two_batch_runs_on_one_cache_pay_once(tmp_path, monkeypatch):
    """A second --batch run on a cache in use waits for the first, then reads its edits from the cache."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"Answer {i} mentions teh topic." for i in range(12)]
    pairs = _write_pairs(tmp_path / "pairs.jsonl", texts)
    cfg = _batch_cfg(tmp_path)
    with fake_anthropic(monkeypatch, KEY, batch_polls=20) as server, ThreadPoolExecutor(2) as pool:
        # Threads lock like processes here: each run opens the lock file itself.
        runs = [pool.submit(run_edit, cfg, pairs, tmp_path / f"out{i}.jsonl", progress=False) for i in range(2)]
        summaries = [run.result(timeout=120) for run in runs]
    sent = [custom_id for batch in server.batches.values() for custom_id in batch.custom_ids]
    assert len(sent) == len(set(sent)) == len(texts)  # every item in one batch request, none paid twice
    assert sorted(s.counters.requests for s in summaries) == [0, len(texts)]
    assert sorted(s.from_cache for s in summaries) == [0, len(texts)]
    for i in range(2):
        assert [r["status"] for r in _read(tmp_path / f"out{i}.jsonl")] == ["edited"] * len(texts)
