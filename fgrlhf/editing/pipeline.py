"""Edit collection (orchestration): load inputs, send the less-preferred responses to an editor with bounded
concurrency and retries, cache every completed item at once, filter, and write the edit records.

Record layout (all input fields kept): prompt, original, edited, editor, model, prompt_version,
source_field, original_tokens, edited_tokens, edit_distance, changed_fraction, status, and for editors
that know what they fixed (the rule editor) fixes = {fault: {fixed, delta_words}}. Status is
``edited`` (training data), ``unchanged``, ``rejected: <reason>`` (empty or too large an edit) or
``failed: <reason>`` (not cached, so a re-run retries it).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock
from tqdm import tqdm

from fgrlhf.algorithms.token_diff import align_tokens
from fgrlhf.data.loading import LoadReport, load_edit_inputs, write_jsonl
from fgrlhf.data.schemas import instruction_text
from fgrlhf.editing.cache import CLAIM_LEASE_S, CachedEdit, CacheKey, EditCache, claim_owner, content_hash
from fgrlhf.editing.config import EditConfig
from fgrlhf.editing.editors import Editor, build_editor
from fgrlhf.editing.prompts import PROMPT_VERSION
from fgrlhf.editing.retry import CallCounters, ItemFailed, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

REJECT_EMPTY = "rejected: empty edit"
REJECT_TOO_LARGE = "rejected: edit too large"
# Exit status of `fgrlhf edit` when an item failed or the run stopped early (completed items are cached, so
# re-running the same command retries only the rest); the filters' "rejected" items are not failures.
EXIT_INCOMPLETE = 3
# How often a run waiting for an item another run has claimed looks for its result in the cache.
CLAIM_POLL_S = 0.5


def failure_causes(statuses: Counter) -> Counter:
    """Failed items per cause: ``failed: connection: APIConnectionError (6 attempts)`` counts as
    ``connection: APIConnectionError``."""
    causes: Counter[str] = Counter()
    for status, n in statuses.items():
        if status.startswith("failed: "):
            causes[re.sub(r" \(\d+ attempts\)$", "", status.removeprefix("failed: "))] += n
    return causes


def exit_status(statuses: Counter) -> int:
    """0 when every item completed (edited, unchanged or rejected by the filters), else EXIT_INCOMPLETE."""
    return EXIT_INCOMPLETE if failure_causes(Counter(statuses)) else 0


@dataclass
class EditSummary:
    items: int = 0
    from_cache: int = 0
    statuses: Counter = field(default_factory=Counter)
    counters: CallCounters = field(default_factory=CallCounters)
    elapsed_s: float = 0.0
    cost_usd: float = 0.0
    skipped_invalid: int = 0
    skip_reasons: Counter = field(default_factory=Counter)
    fixes: dict[str, dict[str, int]] = field(default_factory=dict)  # per fault, over "edited" records

    def add_fixes(self, records: list[dict]) -> None:
        """Sum each fault's fixes and the words they added over the records kept as training data."""
        for record in records:
            if record["status"] != "edited":
                continue
            for fault, done in (record.get("fixes") or {}).items():
                total = self.fixes.setdefault(fault, {"fixed": 0, "delta_words": 0})
                total["fixed"] += done["fixed"]
                total["delta_words"] += done["delta_words"]

    @property
    def items_per_s(self) -> float:
        """Items the editor completed or failed this run (cache hits excluded) per second of wall time."""
        done = self.items - self.from_cache
        return done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "items": self.items,
            "from_cache": self.from_cache,
            "statuses": dict(self.statuses),
            "requests": self.counters.requests,
            "retries": dict(self.counters.retries),
            "input_tokens": self.counters.input_tokens,
            "output_tokens": self.counters.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": round(self.items_per_s, 3),
            "skipped_invalid": self.skipped_invalid,
            "fixes": {
                fault: {**t, "mean_delta_words": round(t["delta_words"] / t["fixed"], 3)}
                for fault, t in self.fixes.items()
            },
        }

    def render(self) -> str:
        c = self.counters
        retries = ", ".join(f"{cause} {n}" for cause, n in sorted(c.retries.items())) or "none"
        lines = [
            f"edited {self.items} items ({self.from_cache} from cache) in {self.elapsed_s:.1f} s, "
            f"{self.items_per_s:.2f} items/s",
            "status: " + ", ".join(f"{status} {n}" for status, n in self.statuses.most_common()),
            f"requests {c.requests}, retries {sum(c.retries.values())} ({retries})",
            f"tokens: input {c.input_tokens:,}, output {c.output_tokens:,}; estimated cost ${self.cost_usd:.4f}",
        ]
        if self.fixes:
            lines.append(
                "fixes in edited records (mean words added per fix): "
                + ", ".join(
                    f"{fault} {t['fixed']} ({t['delta_words'] / t['fixed']:+.1f})" for fault, t in self.fixes.items()
                )
            )
        if self.skipped_invalid:
            reasons = ", ".join(f"{reason} {n}" for reason, n in self.skip_reasons.most_common())
            lines.append(f"skipped invalid input records: {self.skipped_invalid} ({reasons})")
        causes = failure_causes(self.statuses)
        if causes:
            by_cause = ", ".join(f"{cause} {n}" for cause, n in causes.most_common())
            lines.append(
                f"{sum(causes.values())} items failed ({by_cause}); re-run the same command to retry only those"
            )
        return "\n".join(lines)


def classify(
    original_ids: list[int], edited_ids: list[int], edited: str, max_changed_fraction: float
) -> tuple[str, dict]:
    """Status and token statistics of one completed edit."""
    if not edited.strip():
        return REJECT_EMPTY, {
            "original_tokens": len(original_ids),
            "edited_tokens": 0,
            "edit_distance": None,
            "changed_fraction": None,
        }
    alignment = align_tokens(original_ids, edited_ids)
    stats = {
        "original_tokens": len(original_ids),
        "edited_tokens": len(edited_ids),
        "edit_distance": alignment.edit_distance,
        "changed_fraction": round(alignment.changed_fraction, 6),
    }
    if alignment.edit_distance == 0:
        return "unchanged", stats
    if alignment.changed_fraction > max_changed_fraction:
        return REJECT_TOO_LARGE, stats
    return "edited", stats


async def collect_edits(
    records: list[dict],
    source_field: str,
    editor: Editor,
    cache: EditCache,
    cfg: EditConfig,
    summary: EditSummary,
    progress: bool = True,
) -> tuple[list[str | None], list[str | None]]:
    """Edited text (or None) and failure reason (or None) per record, from the cache or the editor."""
    n = len(records)
    edited: list[str | None] = [None] * n
    failures: list[str | None] = [None] * n
    pending = []
    for index, record in enumerate(records):
        digest = content_hash(instruction_text(record), record[source_field], editor.fingerprint())
        key = CacheKey(editor.name, editor.model, PROMPT_VERSION, digest)
        hit = cache.get(key)
        if hit is None:
            pending.append((index, key))
        else:
            edited[index] = hit.edited
    summary.from_cache = n - len(pending)

    policy = RetryPolicy(cfg.retry)
    slots = asyncio.Semaphore(cfg.concurrency)
    bar = tqdm(total=n, initial=summary.from_cache, desc=f"edit ({editor.name})", unit="item", disable=not progress)
    owner = claim_owner()

    async def one(index: int, key: CacheKey) -> None:
        record = records[index]
        while True:
            async with slots:
                if (hit := cache.get(key)) is not None:  # stored meanwhile by another run on this cache
                    edited[index] = hit.edited
                    summary.from_cache += 1
                    bar.update()
                    return
                if cache.claim(key, owner):
                    try:
                        reply = await call_with_retries(
                            lambda: editor.edit(instruction_text(record), record[source_field]),
                            policy,
                            summary.counters,
                            retry_malformed=not editor.deterministic,
                        )
                    except ItemFailed as exc:
                        failures[index] = str(exc)
                    else:
                        summary.counters.add_usage(reply.usage)
                        cache.put(key, CachedEdit(reply.edited, reply.usage))
                        edited[index] = reply.edited
                    finally:
                        cache.release(key, owner)
                    bar.update()
                    return
            # Another run is editing it: wait for its result (or its lease to lapse) rather than pay again.
            await asyncio.sleep(CLAIM_POLL_S)

    async def renew() -> None:
        while True:
            await asyncio.sleep(CLAIM_LEASE_S / 3)
            cache.renew(owner)

    heartbeat = asyncio.ensure_future(renew())
    tasks = [asyncio.ensure_future(one(index, key)) for index, key in pending]
    try:
        await asyncio.gather(*tasks)
    finally:
        # A fatal error (or Ctrl-C) stops the others; what completed is already in the cache.
        for task in [*tasks, heartbeat]:
            task.cancel()
        await asyncio.gather(*tasks, heartbeat, return_exceptions=True)
        cache.release_all(owner)  # what was in flight is free for another run at once
        bar.close()
    return edited, failures


def build_records(
    records: list[dict],
    source_field: str,
    edited: list[str | None],
    failures: list[str | None],
    editor: Editor,
    tokenizer,
    max_changed_fraction: float,
) -> list[dict]:
    originals = [record[source_field] for record in records]
    texts = [text or "" for text in edited]
    original_ids = tokenizer(originals, add_special_tokens=False)["input_ids"]
    edited_ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    out = []
    for index, record in enumerate(records):
        if edited[index] is None:
            status = f"failed: {failures[index]}"
            stats = {
                "original_tokens": len(original_ids[index]),
                "edited_tokens": None,
                "edit_distance": None,
                "changed_fraction": None,
            }
        else:
            status, stats = classify(original_ids[index], edited_ids[index], texts[index], max_changed_fraction)
        fixes = editor.explain(instruction_text(record), originals[index]) if edited[index] is not None else None
        out.append(
            {
                **record,
                "prompt": record["prompt"],
                "original": originals[index],
                "edited": texts[index],
                "editor": editor.name,
                "model": editor.model,
                "prompt_version": PROMPT_VERSION,
                "source_field": source_field,
                **stats,
                "status": status,
                **({"fixes": fixes} if fixes is not None else {}),
            }
        )
    return out


def run_edit(
    cfg: EditConfig,
    input_path: str | Path,
    output_path: str | Path,
    *,
    skip_invalid: bool = False,
    progress: bool = True,
    editor: Editor | None = None,
    field_map: dict[str, str] | None = None,
) -> EditSummary:
    """The whole command: load, edit (resuming from the cache), filter, write ``output_path`` atomically;
    ``field_map`` (``--field-map``) renames the input's fields (fgrlhf.data.schemas)."""
    from fgrlhf.models import load_tokenizer

    report = LoadReport()
    records, source_field = load_edit_inputs(
        input_path, field_map=field_map, skip_invalid=skip_invalid, limit=cfg.limit, report=report
    )
    summary = EditSummary(items=len(records), skipped_invalid=report.skipped, skip_reasons=report.reasons)
    tokenizer = load_tokenizer(cfg.tokenizer)
    editor = editor or build_editor(cfg)
    cache = EditCache(cfg.cache or f"{output_path}.cache.sqlite")
    log.info(
        "editing %d records (field %r) with %s/%s; cache %s",
        len(records),
        source_field,
        editor.name,
        editor.model,
        cache.path,
    )

    if cfg.batch.enabled:
        from fgrlhf.editing.batch import collect_edits_batch as collect  # imports this module
    else:
        collect = collect_edits

    async def main() -> tuple[list[str | None], list[str | None]]:
        try:
            return await collect(records, source_field, editor, cache, cfg, summary, progress)
        finally:
            await editor.aclose()

    start = time.perf_counter()
    try:
        edited, failures = asyncio.run(main())
    finally:
        summary.elapsed_s = time.perf_counter() - start
        cache.close()
    out = build_records(records, source_field, edited, failures, editor, tokenizer, cfg.max_changed_fraction)
    with FileLock(f"{output_path}.lock"):  # two runs into one output: one writer at a time (same temp file)
        write_jsonl(output_path, out)
    summary.statuses = Counter(record["status"] for record in out)
    summary.add_fixes(out)
    if editor.name == "anthropic":
        price = cfg.anthropic
        summary.cost_usd = (
            summary.counters.input_tokens * price.input_usd_per_mtok
            + summary.counters.output_tokens * price.output_usd_per_mtok
        ) / 1e6
        if cfg.batch.enabled:
            summary.cost_usd *= cfg.batch.price_factor
    return summary
