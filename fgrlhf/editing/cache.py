"""Persistent cache of completed edits (stdlib sqlite3, WAL): a re-run re-sends nothing that completed.

One row per completed item, committed the moment it completes, so a crash, Ctrl-C or ``kill -9`` loses
at most the requests in flight. Only replies the editor produced are stored (the edited text and the
tokens it cost); the status filters are applied on every run, so changing a bound needs no new request.
Failures are never stored: a re-run retries them. Nothing secret is stored (no headers, no key).

Two runs on one cache at once pay once per item: before requesting an item a run claims it (a ``claims`` row
with its owner and a lease it renews while it lives); an item claimed by another live run is waited for and
read from the cache when that run stores it. A run that dies stops renewing, its leases expire after
``CLAIM_LEASE_S`` (at once when it ran on this host and its pid is gone) and another run takes its items
over; an item that failed is released and retried.

Batch mode (:mod:`fgrlhf.editing.batch`) also records each Message Batch the moment it is created, with
the custom_id (= content hash) of every request in it, until its results are stored: a run that was
interrupted while batches were processing re-attaches to them instead of paying for the items again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
import uuid
from contextlib import contextmanager
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
);
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    editor TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    created REAL NOT NULL,
    collected REAL
);
CREATE TABLE IF NOT EXISTS batch_items (
    batch_id TEXT NOT NULL REFERENCES batches(batch_id),
    custom_id TEXT NOT NULL,
    PRIMARY KEY (batch_id, custom_id)
);
CREATE TABLE IF NOT EXISTS claims (
    editor TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    owner TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (editor, model, prompt_version, content_hash)
);
"""
# A claim lasts this long unless its run renews it (every CLAIM_LEASE_S / 3 while the run lives): a run killed
# mid-request holds its items up to this long before another run takes them over.
CLAIM_LEASE_S = 60.0


def claim_owner() -> str:
    """A run's name in the claims: ``host:pid:random`` (the random part because pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _dead_here(owner: str) -> bool:
    """``owner`` ran on this host and its process is gone."""
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
        self._db.executescript(_SCHEMA)

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
            (
                key.editor,
                key.model,
                key.prompt_version,
                key.content_hash,
                edit.edited,
                edit.usage.input_tokens,
                edit.usage.output_tokens,
                time.time(),
            ),
        )

    def claim(self, key: CacheKey, owner: str, lease_s: float = CLAIM_LEASE_S) -> bool:
        """Claim ``key`` for ``owner`` (one statement, so atomic between processes): True when it was free,
        expired or already ``owner``'s; False while another owner's lease runs."""
        now = time.time()
        cursor = self._db.execute(
            "INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (editor, model, prompt_version, content_hash) DO UPDATE "
            "SET owner = excluded.owner, expires = excluded.expires "
            "WHERE claims.expires < ? OR claims.owner = excluded.owner",
            (key.editor, key.model, key.prompt_version, key.content_hash, owner, now + lease_s, now),
        )
        if cursor.rowcount == 1:
            return True
        row = self._db.execute(
            "SELECT owner FROM claims WHERE editor=? AND model=? AND prompt_version=? AND content_hash=?",
            (key.editor, key.model, key.prompt_version, key.content_hash),
        ).fetchone()
        if row is None or not _dead_here(row[0]):
            return False
        # Its run died on this machine (kill -9): no need to wait out the lease.
        cursor = self._db.execute(
            "UPDATE claims SET owner=?, expires=? "
            "WHERE editor=? AND model=? AND prompt_version=? AND content_hash=? AND owner=?",
            (owner, now + lease_s, key.editor, key.model, key.prompt_version, key.content_hash, row[0]),
        )
        return cursor.rowcount == 1

    def renew(self, owner: str, lease_s: float = CLAIM_LEASE_S) -> None:
        """Extend every claim of ``owner`` (its run is alive)."""
        self._db.execute("UPDATE claims SET expires = ? WHERE owner = ?", (time.time() + lease_s, owner))

    def release(self, key: CacheKey, owner: str) -> None:
        self._db.execute(
            "DELETE FROM claims WHERE editor=? AND model=? AND prompt_version=? AND content_hash=? AND owner=?",
            (key.editor, key.model, key.prompt_version, key.content_hash, owner),
        )

    def release_all(self, owner: str) -> None:
        self._db.execute("DELETE FROM claims WHERE owner = ?", (owner,))

    @contextmanager
    def _transaction(self):
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def add_batch(self, batch_id: str, scope: CacheKey, custom_ids: list[str]) -> None:
        """Record a created batch (``scope`` gives its editor, model and prompt version) and its requests."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, NULL)",
                (batch_id, scope.editor, scope.model, scope.prompt_version, time.time()),
            )
            self._db.executemany("INSERT INTO batch_items VALUES (?, ?)", [(batch_id, c) for c in custom_ids])

    def open_batches(self, scope: CacheKey) -> dict[str, list[str]]:
        """Batches of this editor, model and prompt version whose results are not stored yet -> custom_ids."""
        rows = self._db.execute(
            "SELECT b.batch_id, i.custom_id FROM batches b JOIN batch_items i ON i.batch_id = b.batch_id "
            "WHERE b.collected IS NULL AND b.editor=? AND b.model=? AND b.prompt_version=? ORDER BY b.created",
            (scope.editor, scope.model, scope.prompt_version),
        ).fetchall()
        batches: dict[str, list[str]] = {}
        for batch_id, custom_id in rows:
            batches.setdefault(batch_id, []).append(custom_id)
        return batches

    def close_batch(self, batch_id: str, edits: list[tuple[CacheKey, CachedEdit]]) -> None:
        """Store a batch's successful edits and mark it collected, in one transaction: a crash in between
        leaves it open, and the next run downloads its results again."""
        with self._transaction():
            for key, edit in edits:
                self.put(key, edit)
            self._db.execute("UPDATE batches SET collected=? WHERE batch_id=?", (time.time(), batch_id))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM edits").fetchone()[0]

    def close(self) -> None:
        self._db.close()
