"""Retry policy for calls to a rate-limited LLM service (used by the edit pipeline; reusable by a judge).

Why our own retries instead of the SDK's: the SDK's are invisible (no count by cause) and not testable
against a schedule; here every attempt is counted, a server's ``retry-after`` is a floor for the wait,
backoff is exponential with seeded jitter, and a 429/529 pauses *all* callers (one shared gate) instead of
letting the other in-flight workers keep hammering an overloaded endpoint. When the first requests of a run
all fail to connect (``retry.max_initial_connect_failures``), the run stops with a FatalError at once instead
of backing off on every item.

Callers classify failures into the exceptions below; :func:`call_with_retries` owns what happens next.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from fgrlhf.editing.config import RetryConfig

T = TypeVar("T")


@dataclass(frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0


class TransientError(Exception):
    """Worth retrying: rate limit, overload, server error, time-out, dropped connection."""

    def __init__(self, cause: str, retry_after: float | None = None, detail: str = ""):
        super().__init__(f"{cause}{': ' + detail if detail else ''}")
        self.cause = cause
        self.retry_after = retry_after


class MalformedReply(Exception):
    """The service answered but not in the agreed format; its tokens were still spent."""

    def __init__(self, usage: Usage):
        super().__init__("malformed reply")
        self.usage = usage


class PermanentError(Exception):
    """This item cannot succeed by retrying (e.g. HTTP 400); the message is the failure reason."""


class FatalError(Exception):
    """No item can succeed (e.g. authentication): stop the run, keep what completed."""


class ItemFailed(Exception):
    """Retries are exhausted or pointless; the message becomes ``failed: <reason>``."""


@dataclass
class CallCounters:
    requests: int = 0
    retries: Counter = field(default_factory=Counter)  # cause -> retries caused
    input_tokens: int = 0
    output_tokens: int = 0

    def add_usage(self, usage: Usage) -> None:
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date), else None."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            parsed = email.utils.parsedate_tz(value) if name == "retry-after" else None
            if parsed is not None:
                return max(0.0, email.utils.mktime_tz(parsed) - time.time())
    return None


class RetryPolicy:
    """Backoff schedule plus a shared pause gate; one instance per run, shared by all concurrent calls."""

    def __init__(self, cfg: RetryConfig):
        self.cfg = cfg
        self._rng = random.Random(cfg.seed)
        self._resume_at = 0.0  # monotonic time before which nobody sends (set by a server's retry-after)
        self._connected = False  # any answer from the service, even an error, proves the endpoint works
        self._connect_failures = 0

    def delay(self, retry_number: int, retry_after: float | None) -> float:
        """Wait before retry ``retry_number`` (1-based): exponential with jitter, never below retry-after."""
        backoff = min(self.cfg.max_backoff_s, self.cfg.initial_backoff_s * 2 ** (retry_number - 1))
        backoff *= 1.0 - self.cfg.jitter * self._rng.random()
        if retry_after is None:
            return backoff
        # A little jitter on top so that callers told the same retry-after do not all return at once.
        floor = min(retry_after, self.cfg.max_retry_after_s)
        return max(backoff, floor * (1.0 + 0.1 * self._rng.random()))

    async def wait_gate(self) -> None:
        while (remaining := self._resume_at - time.monotonic()) > 0:
            await asyncio.sleep(remaining)

    def pause_all(self, seconds: float) -> None:
        self._resume_at = max(self._resume_at, time.monotonic() + seconds)

    def note_answer(self, error: TransientError | None = None) -> None:
        """Record how one request ended; raise FatalError once the first ``max_initial_connect_failures``
        requests have all failed to connect: retrying every item for minutes would not help."""
        if error is None or error.cause != "connection":
            self._connected = True
            return
        limit = self.cfg.max_initial_connect_failures
        if self._connected or not limit:
            return
        self._connect_failures += 1
        if self._connect_failures >= limit:
            raise FatalError(
                f"the first {self._connect_failures} requests all failed to connect ({error}); "
                "check ANTHROPIC_BASE_URL and the network"
            )


async def call_with_retries(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    counters: CallCounters,
    *,
    retry_malformed: bool = True,
) -> T:
    """Run ``call`` until it succeeds; raise :class:`ItemFailed` with the reason when it cannot.

    ``retry_malformed=False`` is for deterministic services, whose malformed reply would only repeat.
    """
    transient_failures = 0
    malformed_failures = 0
    malformed_limit = policy.cfg.malformed_attempts if retry_malformed else 1
    while True:
        await policy.wait_gate()
        counters.requests += 1
        try:
            result = await call()
        except MalformedReply as exc:
            policy.note_answer()
            counters.add_usage(exc.usage)
            malformed_failures += 1
            if malformed_failures >= malformed_limit:
                raise ItemFailed("malformed reply") from None
            counters.retries["malformed"] += 1
        except TransientError as exc:
            policy.note_answer(exc)
            transient_failures += 1
            if transient_failures >= policy.cfg.max_attempts:
                raise ItemFailed(f"{exc} ({transient_failures} attempts)") from None
            counters.retries[exc.cause] += 1
            wait = policy.delay(transient_failures, exc.retry_after)
            if exc.retry_after is not None:
                policy.pause_all(wait)
            await asyncio.sleep(wait)
        except PermanentError as exc:
            policy.note_answer()
            raise ItemFailed(str(exc)) from None
        else:
            policy.note_answer()
            return result
