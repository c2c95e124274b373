"""Intervals for a handful of paired per-seed values (Table 3's ratios over 3–5 seeds), where a percentile
bootstrap would sit on its own estimate."""

from __future__ import annotations

import math
from collections.abc import Iterable


def sign_test_interval(lows: list[float], highs: list[float], level: float = 0.95) -> dict[str, float]:
    """Distribution-free interval for the median of paired per-seed values (the exact sign-test /
    order-statistic interval): [x_(k), x_(n+1-k)] covers the median with probability 1 − 2·P(Bin(n, ½) < k),
    with the largest k whose coverage is still ≥ ``level`` (k = 1 when none is: five values reach at most
    1 − 2/32 = 93.75 %, reported as ``coverage``). A censored value is known only to lie in [low, high];
    taking the k-th smallest low and the k-th largest high keeps the coverage (order statistics are monotone
    in every value). Equal lows and highs are plain values."""
    n = len(lows)
    if n != len(highs) or not n:
        raise ValueError(f"paired, non-empty per-seed values needed, got {len(lows)} and {len(highs)}")

    def coverage(k: int) -> float:
        return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(k)) / 2.0**n

    k = 1
    while k + 1 <= (n + 1) // 2 and coverage(k + 1) >= level:
        k += 1
    return {"low": sorted(lows)[k - 1], "high": sorted(highs)[n - k], "coverage": coverage(k), "k": k, "n": n}


def censored_ratio(
    numerator: float, numerator_observed: bool, denominator: float, denominator_observed: bool
) -> tuple[float, float, float]:
    """``numerator / denominator`` of two times to an event (one seed's pair of runs), with the interval the
    ratio is known to lie in. A time not observed (the run ended first; the time given is its whole budget)
    is only a lower bound on its own value: a censored numerator makes the ratio a lower bound (upper end
    ∞), a censored denominator an upper bound (lower end 0). The ends feed :func:`sign_test_interval`."""
    value = numerator / denominator
    return value, value if denominator_observed else 0.0, value if numerator_observed else math.inf


def open_ends_as_null(ends: Iterable[float]) -> list[float | None]:
    """An interval's ends for JSON, which has no infinity: an open end (0 or ∞, from a censored ratio) is
    null."""
    return [end if math.isfinite(end) and end > 0 else None for end in ends]
