"""Two ``fgrlhf edit`` runs on one cache at once (fgrlhf.editing.cache claims): each item is requested once, the
other run waits for it; a dead run's claims lapse; the output file has one writer at a time."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fgrlhf.editing.cache import CachedEdit, CacheKey, EditCache, claim_owner
from fgrlhf.editing.retry import Usage
from tests.helpers import edit_command, fake_anthropic

KEY = "sk-ant-test-CLAIMS-1"
ROOT = Path(__file__).resolve().parents[1]


def _key(i: int) -> CacheKey:
    return CacheKey("anthropic", "m", "v1", f"hash{i}")


def test_a_claim_holds_while_its_lease_runs_and_lapses_after(tmp_path):
    a, b = EditCache(tmp_path / "c.sqlite"), EditCache(tmp_path / "c.sqlite")  # two processes' connections
    try:
        assert a.claim(_key(1), "run-a", lease_s=30)
        assert a.claim(_key(1), "run-a", lease_s=30)  # its own claim again: still its
        assert not b.claim(_key(1), "run-b", lease_s=30)  # live lease: wait
        assert b.claim(_key(2), "run-b", lease_s=30)  # another item is free
        a.renew("run-a", lease_s=-1)  # as if run-a died a lease ago
        assert b.claim(_key(1), "run-b", lease_s=30)  # lapsed: taken over
        assert not a.claim(_key(1), "run-a", lease_s=30)
        b.put(_key(1), CachedEdit("x", Usage(1, 1)))
        b.release(_key(1), "run-b")
        assert a.claim(_key(1), "run-a", lease_s=30)  # released: free (the caller reads the cache first)
        b.release_all("run-b")
        assert a.claim(_key(2), "run-a", lease_s=30)
    finally:
        a.close()
        b.close()


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    cache = EditCache(tmp_path / "c.sqlite")
    try:
        assert cache.claim(_key(1), f"{socket.gethostname()}:{int(dead.stdout)}:abcd", lease_s=600)
        assert cache.claim(_key(2), f"{socket.gethostname()}:{os.getpid()}:abcd", lease_s=600)  # alive: this one
        assert cache.claim(_key(3), f"other-host:{int(dead.stdout)}:abcd", lease_s=600)  # unknowable: its lease
        assert cache.claim(_key(1), claim_owner(), lease_s=600)
        assert not cache.claim(_key(2), claim_owner(), lease_s=600)
        assert not cache.claim(_key(3), claim_owner(), lease_s=600)
    finally:
        cache.close()


@pytest.mark.slow
def test_two_concurrent_edits_on_one_cache_pay_once_per_item(tmp_path, monkeypatch):
    texts = [f"Answer {i} has teh typo in it." for i in range(40)]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(json.dumps({"prompt": f"Q{i}?", "chosen": "ok", "rejected": t}) + "\n" for i, t in enumerate(texts))
    )
    out, cache = tmp_path / "edits.jsonl", tmp_path / "cache.sqlite"
    argv = edit_command(pairs, out, "anthropic", "--concurrency", "2", "--cache", str(cache), "tokenizer=tiny")
    with fake_anthropic(monkeypatch, KEY, latency_s=0.4) as server:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "fgrlhf.cli", *argv], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=300)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0], outputs
        sent = [entry.key for entry in server.log]
    assert len(sent) == len(set(sent)) == 40  # 40 items, 40 requests: none paid twice
    requests = [int(re.search(r"^requests (\d+),", o, re.M).group(1)) for o in outputs]  # type: ignore[union-attr]
    assert sum(requests) == 40 and min(requests) > 0, outputs  # both runs worked, on different items
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["status"] for r in records] == ["edited"] * 40
