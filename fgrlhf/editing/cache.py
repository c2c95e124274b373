"""Persistent cache of completed edits (stdlib sqlite3, WAL): a re-run re-sends nothing that completed.

One row per completed item, committed the moment it completes, so a crash, Ctrl-C or ``kill -9`` loses
at most the requests in flight. Only replies the editor produced are stored (the edited text and the
tokens it cost); the status filters are applied on every run, so changing a bound needs no new request.
Failures are never stored: a re-run retries them. Nothing secret is stored (no headers, no key).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from fgrlhf.editing.retry import Usage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS edits (
    editor TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    edited TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (editor, model, prompt_version, content_hash)
)
"""


@dataclass(frozen=True)
class CacheKey:
    editor: str
    model: str
    prompt_version: str
    content_hash: str


def content_hash(instruction: str, text: str, fingerprint: str) -> str:
    """Hash of everything else that determines the reply: the prompt, the text and the editor settings."""
    payload = json.dumps([instruction, text, fingerprint], ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class CachedEdit:
    edited: str
    usage: Usage


class EditCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit: each put is its own durable transaction. WAL lets a second process read meanwhile;
        # synchronous=NORMAL in WAL mode survives a process kill (only an OS crash may lose the last rows).
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def get(self, key: CacheKey) -> CachedEdit | None:
        row = self._db.execute(
            "SELECT edited, input_tokens, output_tokens FROM edits "
            "WHERE editor=? AND model=? AND prompt_version=? AND content_hash=?",
            (key.editor, key.model, key.prompt_version, key.content_hash),
        ).fetchone()
        return None if row is None else CachedEdit(row[0], Usage(row[1], row[2]))

    def put(self, key: CacheKey, edit: CachedEdit) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO edits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key.editor, key.model, key.prompt_version, key.content_hash, edit.edited,
             edit.usage.input_tokens, edit.usage.output_tokens, time.time()),
        )

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM edits").fetchone()[0]

    def close(self) -> None:
        self._db.close()
