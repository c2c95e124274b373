"""Edit collection through the Message Batches API (``fgrlhf edit --editor anthropic --batch``).

The paper edits every less-preferred response of the preference set (AlpacaFarm: ~10k pairs); batches cost
half as much and need no rate-limit handling. The flow, with the same records and statuses as the streaming
mode (:func:`fgrlhf.editing.pipeline.collect_edits`):

1. Items already in the cache are not sent. Items inside a batch that an interrupted run created (recorded in
   the cache DB) are re-attached to it instead of being paid for again.
2. The rest go out in batches of at most ``batch.chunk_size`` requests / ``batch.max_batch_bytes``; each
   request's ``custom_id`` is its cache key's content hash, so results are joined back by ``custom_id``.
3. Open batches are polled every ``batch.poll_interval_s``. When one ends, its successes are stored in the
   cache (and the batch marked collected) in one transaction; its errored, expired, canceled and malformed
   items are resubmitted in a new batch, within the same per-item limits as streaming retries
   (``retry.max_attempts`` transient failures, ``retry.malformed_attempts`` malformed replies). Invalid
   requests fail at once, as an HTTP 400 does when streaming.

Requests are built and replies parsed by :class:`~fgrlhf.editing.editors.ClaudeEditor`, errors classified by
:func:`~fgrlhf.editing.editors.classify_status`; the batch API's own calls (create, retrieve, results) go
through the streaming mode's retry policy, and a call that still fails stops the run with the open batches
kept for the next one.

The machinery is not edit-specific: :func:`run_batches` sends any cache misses as a :class:`BatchJob` (the
Claude judge, :mod:`fgrlhf.evaluation.judges`, uses it too), inside :func:`batch_lock`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from filelock import FileLock, Timeout
from tqdm import tqdm

from fgrlhf.config import ConfigError
from fgrlhf.data.schemas import instruction_text
from fgrlhf.editing.cache import CachedEdit, CacheKey, EditCache, content_hash
from fgrlhf.editing.config import BatchConfig, EditConfig, RetryConfig
from fgrlhf.editing.editors import ClaudeEditor, Editor, EditReply, call_api, classify_status, message_reply
from fgrlhf.editing.pipeline import EditSummary
from fgrlhf.editing.prompts import PROMPT_VERSION
from fgrlhf.editing.retry import (
    CallCounters,
    FatalError,
    ItemFailed,
    MalformedReply,
    PermanentError,
    RetryPolicy,
    TransientError,
    Usage,
    call_with_retries,
)

log = logging.getLogger(__name__)

# A batch result carries the error's type but not its HTTP status; these are the statuses the API documents
# for each type, so that a batched item is classified (and its failure worded) as the same error streamed.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_BODY_OVERHEAD = len('{"requests": []}')
# How often a --batch run waiting for another one on its cache checks whether that one has ended.
BATCH_LOCK_POLL_S = 1.0


@dataclass(frozen=True)
class BatchJob:
    """What a batch run sends and how it reads the replies: the edit's, or the Claude judge's."""

    client: Any  # anthropic.AsyncAnthropic
    scope: CacheKey  # editor, model and prompt version of every request: its cache rows and recorded batches
    params: Callable[[int], dict]  # record index -> Messages API parameters
    parse: Callable[[str, Usage], EditReply]  # reply text -> what the cache stores; MalformedReply if unusable


@dataclass
class _Item:
    """One distinct request; records with the same cache key share it."""

    indices: list[int]
    transient: int = 0
    malformed: int = 0


def result_reply(result, parse: Callable[[str, Usage], EditReply] = ClaudeEditor.reply) -> EditReply:
    """The reply in one batch result, or the exception its streamed equivalent would have raised."""
    if result.type == "succeeded":
        return parse(*message_reply(result.message))
    if result.type == "errored":
        kind = result.error.error.type
        raise classify_status(_ERROR_STATUS.get(kind, 500), kind, {})
    raise TransientError(result.type)  # expired or canceled: never processed, so resubmitting is the cure


@dataclass
class _BatchRun:
    job: BatchJob
    cache: EditCache
    batch: BatchConfig
    retry: RetryConfig
    counters: CallCounters
    items: dict[str, _Item]
    edited: list[str | None]
    failures: list[str | None]
    bar: tqdm
    policy: RetryPolicy = field(init=False)
    api_counters: CallCounters = field(default_factory=CallCounters)
    open: dict[str, list[str]] = field(default_factory=dict)  # batch id -> custom_ids
    owner: dict[str, str] = field(default_factory=dict)  # unresolved custom_id -> the batch it awaits

    def __post_init__(self) -> None:
        self.policy = RetryPolicy(self.retry)

    async def api(self, what: str, call: Callable[[], Awaitable]):
        """One call of the batch API with the streaming mode's retries; when they run out the run stops
        (open batches stay recorded for the next run)."""
        try:
            return await call_with_retries(lambda: call_api(call()), self.policy, self.api_counters)
        except ItemFailed as exc:
            raise FatalError(f"Message Batches API: {what} failed: {exc}") from None

    def attach(self, batch_id: str, custom_ids: list[str]) -> None:
        self.open[batch_id] = custom_ids
        for custom_id in custom_ids:
            if custom_id in self.items and custom_id not in self.owner:
                self.owner[custom_id] = batch_id

    def chunks(self, custom_ids: list[str]):
        """Requests in groups within the API's per-batch limits on count and size (at least one each)."""
        chunk: list[dict[str, Any]] = []
        size = _BODY_OVERHEAD
        for custom_id in custom_ids:
            request = {"custom_id": custom_id, "params": self.job.params(self.items[custom_id].indices[0])}
            # ASCII-escaped JSON: an upper bound on the size of however the client encodes it.
            request_size = len(json.dumps(request)) + 2  # ", "
            if chunk and (len(chunk) == self.batch.chunk_size or size + request_size > self.batch.max_batch_bytes):
                yield chunk
                chunk, size = [], _BODY_OVERHEAD
            chunk.append(request)
            size += request_size
        if chunk:
            yield chunk

    async def submit(self, custom_ids: list[str]) -> None:
        for requests in self.chunks(custom_ids):
            batch = await self.api("create", partial(self.job.client.messages.batches.create, requests=requests))
            ids = [request["custom_id"] for request in requests]
            # Recorded before anything else happens: from here on an interrupted run re-attaches to it.
            self.cache.add_batch(batch.id, self.job.scope, ids)
            self.counters.requests += len(ids)
            self.attach(batch.id, ids)
            log.info("created message batch %s with %d requests", batch.id, len(ids))

    async def _retrieve(self, batch_id: str):
        import anthropic as sdk

        try:
            return await self.job.client.messages.batches.retrieve(batch_id)
        except sdk.NotFoundError:
            return None

    async def _results(self, batch_id: str) -> list:
        return [line async for line in await self.job.client.messages.batches.results(batch_id)]

    def resolve(self, custom_id: str, edited: str | None = None, failure: str | None = None) -> None:
        for index in self.items[custom_id].indices:
            self.edited[index], self.failures[index] = edited, failure
        self.owner.pop(custom_id)
        self.bar.update(len(self.items[custom_id].indices))

    def outcome(self, custom_id: str, exc: Exception) -> bool:
        """Count one failed attempt of an item (as :func:`call_with_retries` does); True: resubmit it."""
        item = self.items[custom_id]
        if isinstance(exc, MalformedReply):
            item.malformed += 1
            if item.malformed < self.retry.malformed_attempts:
                self.counters.retries["malformed"] += 1
                return True
            self.resolve(custom_id, failure="malformed reply")
        elif isinstance(exc, TransientError):
            item.transient += 1
            if item.transient < self.retry.max_attempts:
                self.counters.retries[exc.cause] += 1
                return True
            self.resolve(custom_id, failure=f"{exc} ({item.transient} attempts)")
        else:
            self.resolve(custom_id, failure=str(exc))
        return False

    async def collect(self, batch_id: str) -> list[str]:
        """Store an ended batch's results; the custom_ids of this run's items to resubmit."""
        results = await self.api(f"results of {batch_id}", lambda: self._results(batch_id))
        stored, resubmit, seen = [], [], set()
        for line in results:
            custom_id = line.custom_id
            seen.add(custom_id)
            try:
                reply = result_reply(line.result, self.job.parse)
            except (MalformedReply, TransientError, PermanentError) as exc:
                if isinstance(exc, MalformedReply):
                    self.counters.add_usage(exc.usage)
                if self.owner.get(custom_id) == batch_id and self.outcome(custom_id, exc):
                    resubmit.append(custom_id)
                continue
            self.counters.add_usage(reply.usage)
            # Every success is kept, also those of items this run does not need: they were paid for.
            stored.append((replace(self.job.scope, content_hash=custom_id), CachedEdit(reply.edited, reply.usage)))
            if self.owner.get(custom_id) == batch_id:
                self.resolve(custom_id, edited=reply.edited)
        self.cache.close_batch(batch_id, stored)
        for custom_id in self.open.pop(batch_id):
            if (
                self.owner.get(custom_id) == batch_id
                and custom_id not in seen
                and self.outcome(custom_id, TransientError("missing_result"))
            ):
                resubmit.append(custom_id)
        for custom_id in resubmit:
            self.owner.pop(custom_id, None)
        return resubmit

    async def poll(self) -> None:
        """Poll the open batches until none is left, collecting each as it ends and resubmitting its failures."""
        interval = self.batch.poll_interval_s
        while self.open:
            for batch_id in list(self.open):
                batch = await self.api(f"retrieve {batch_id}", partial(self._retrieve, batch_id))
                if batch is None:  # deleted, or its results expired: send its items again
                    log.warning("message batch %s no longer exists; resubmitting its items", batch_id)
                    self.cache.close_batch(batch_id, [])
                    lost = [c for c in self.open.pop(batch_id) if self.owner.get(c) == batch_id]
                    for custom_id in lost:
                        self.owner.pop(custom_id)
                    await self.submit(lost)
                elif batch.processing_status == "ended":
                    resubmit = await self.collect(batch_id)
                    if resubmit:
                        log.info("resubmitting %d items of message batch %s", len(resubmit), batch_id)
                        await self.submit(resubmit)
            self.bar.set_postfix(batches=len(self.open), waiting=len(self.owner))
            if self.open:
                await asyncio.sleep(interval)


@asynccontextmanager
async def batch_lock(cache: EditCache) -> AsyncIterator[None]:
    """One batch run per cache at a time: a second one would create batches for the same items before the
    first has recorded its own. It waits, then (looking the cache up inside the lock) takes what the first
    stored."""
    lock = FileLock(f"{cache.path}.batch.lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another batch run is using the cache %s; waiting for it to end", cache.path)
        while True:
            await asyncio.sleep(BATCH_LOCK_POLL_S)
            try:
                lock.acquire(timeout=0)
                break
            except Timeout:
                continue
    try:
        yield
    finally:
        lock.release()


def pending_items(keys: list[CacheKey], cache: EditCache, results: list[str | None]) -> dict[str, list[int]]:
    """Fill ``results`` from the cache; the rest: content hash (the custom_id) -> the record indices sharing it."""
    pending: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        if key.content_hash in pending:
            pending[key.content_hash].append(index)
        elif (hit := cache.get(key)) is not None:
            results[index] = hit.edited
        else:
            pending[key.content_hash] = [index]
    return pending


async def run_batches(
    job: BatchJob,
    cache: EditCache,
    batch: BatchConfig,
    retry: RetryConfig,
    counters: CallCounters,
    pending: dict[str, list[int]],
    results: list[str | None],
    failures: list[str | None],
    desc: str,
    progress: bool = True,
) -> None:
    """Fill ``results`` (or ``failures``) of the ``pending`` records through Message Batches: re-attach to the
    open batches an interrupted run recorded, submit the rest, poll until every item is resolved. Run it inside
    :func:`batch_lock`, with ``pending`` from :func:`pending_items` taken inside it too.

    ``counters.requests`` counts the requests submitted in batches by this run.
    """
    items = {custom_id: _Item(indices) for custom_id, indices in pending.items()}
    cached = len(results) - sum(len(indices) for indices in pending.values())
    bar = tqdm(total=len(results), initial=cached, desc=desc, unit="item", disable=not progress)
    run = _BatchRun(job, cache, batch, retry, counters, items, results, failures, bar)
    try:
        for batch_id, custom_ids in cache.open_batches(job.scope).items():
            if any(custom_id in items for custom_id in custom_ids):
                run.attach(batch_id, custom_ids)
                log.info("re-attached to message batch %s (%d requests)", batch_id, len(custom_ids))
        await run.submit([custom_id for custom_id in items if custom_id not in run.owner])
        await run.poll()
    finally:
        bar.close()
        if run.api_counters.requests:
            retries = dict(run.api_counters.retries) or "none"
            log.info("batch API: %d calls, retries %s", run.api_counters.requests, retries)


async def collect_edits_batch(
    records: list[dict],
    source_field: str,
    editor: Editor,
    cache: EditCache,
    cfg: EditConfig,
    summary: EditSummary,
    progress: bool = True,
) -> tuple[list[str | None], list[str | None]]:
    """Edited text (or None) and failure reason (or None) per record: cache, re-attached batches, new batches.

    Same contract as :func:`fgrlhf.editing.pipeline.collect_edits`; ``summary.counters.requests`` counts
    the requests submitted in batches by this run.
    """
    if not isinstance(editor, ClaudeEditor):
        raise ConfigError(f"--batch needs the anthropic editor, not {editor.name}")
    n = len(records)
    edited: list[str | None] = [None] * n
    failures: list[str | None] = [None] * n
    keys = [
        CacheKey(
            editor.name,
            editor.model,
            PROMPT_VERSION,
            content_hash(instruction_text(record), record[source_field], editor.fingerprint()),
        )
        for record in records
    ]
    job = BatchJob(
        editor.client,
        CacheKey(editor.name, editor.model, PROMPT_VERSION, ""),
        lambda index: editor.request(instruction_text(records[index]), records[index][source_field]),
        ClaudeEditor.reply,
    )
    async with batch_lock(cache):
        pending = pending_items(keys, cache, edited)
        summary.from_cache = n - sum(len(indices) for indices in pending.values())
        await run_batches(
            job,
            cache,
            cfg.batch,
            cfg.retry,
            summary.counters,
            pending,
            edited,
            failures,
            "edit (anthropic, batch)",
            progress,
        )
    return edited, failures
