"""Helpers the test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fgrlhf.data.loading import read_jsonl


def t(*rows):
    """A float32 tensor of hand-written rows."""
    import torch

    return torch.tensor(rows, dtype=torch.float32)


def read_metrics(run_dir: Path) -> list[dict]:
    """One dict per logged step of a trainer's run directory."""
    return read_jsonl(run_dir / "metrics.jsonl")


def crashed_copy(run: Path, crashed: Path) -> Path:
    """A copy of a finished 4-step PPO run (checkpoints every 2 steps) as a crash after step 3 leaves it: the
    step-2 checkpoint, metrics up to step 3, no final/, status running."""
    shutil.copytree(run, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_4")
    shutil.rmtree(crashed / "final")
    lines = (crashed / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    manifest = json.loads((crashed / "run.json").read_text())
    (crashed / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    return crashed


def last_json(text: str) -> dict:
    """The JSON line a command printed last (commands end with one)."""
    return json.loads(text.strip().splitlines()[-1])


def write_pairs(path: Path, rejected: list[str], prefix: str = "") -> Path:
    """Preference pairs ``Q{i}?`` / ``ok`` / ``rejected[i]``, after ``prefix`` (e.g. a bad line)."""
    path.write_text(
        prefix
        + "".join(
            json.dumps({"prompt": f"Q{i}?", "chosen": "ok", "rejected": text}) + "\n" for i, text in enumerate(rejected)
        ),
        encoding="utf-8",
    )
    return path


def edit_command(source: str | Path, output: str | Path, editor: str, *extra: str) -> list[str]:
    """``fgrlhf edit`` arguments without the progress bar; ``extra``: further flags, then key=value overrides."""
    return ["edit", "--input", str(source), "--output", str(output), "--editor", editor, "--no-progress", *extra]


def assert_key_absent(directory: Path, key: str) -> None:
    """No file under ``directory`` holds the API key (caches, logs, outputs)."""
    for path in directory.rglob("*"):
        if path.is_file():
            assert key.encode() not in path.read_bytes(), f"API key leaked into {path}"


@contextmanager
def fake_anthropic(monkeypatch, key: str, **kwargs) -> Iterator:
    """A fake Messages API (tests/fake_messages_server.py) that the anthropic SDK in this process and the
    processes it starts talks to, with ``key`` as the API key."""
    from tests.fake_messages_server import FakeMessagesServer

    with FakeMessagesServer(key, **kwargs) as server:
        monkeypatch.setenv("ANTHROPIC_API_KEY", key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        yield server
