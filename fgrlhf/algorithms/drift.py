"""Drift alarms for a PPO run: a policy gaming its reward model tends to show it first as a change of length,
a KL to the reference that keeps growing, or repeated text. Pure functions on a step's figures.

An alarm compares the step's figures with thresholds and, for length and repetition, with the run's first
step (the initial policy). Each kind fires once per run: the trainer passes the kinds already raised.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

AlarmKind = Literal["length", "kl", "repetition"]


@dataclass(frozen=True)
class Alarm:
    """``value`` crossed ``threshold`` at ``step``: length, the signed change of the mean response length as a
    fraction of the first step's; kl, the mean KL per response (nats); repetition, the repetition rate minus
    the first step's."""

    kind: AlarmKind
    step: int
    value: float
    threshold: float

    def as_record(self) -> dict[str, object]:
        return asdict(self)


def repetition_rate(responses: Sequence[Sequence[int]], n: int) -> float:
    """Share of the batch's token n-grams that repeat an earlier n-gram of the same response:
    Σ (n-grams − distinct n-grams) / Σ n-grams over the responses; 0 when no response has n tokens.

    A response with ``a b a b a`` has the 2-grams ab, ba, ab, ba: two of four repeat, rate 0.5.
    """
    if n < 1:
        raise ValueError(f"repetition n-gram size must be >= 1 (got {n})")
    total = repeated = 0
    for ids in responses:
        grams = Counter(tuple(ids[i : i + n]) for i in range(len(ids) - n + 1))
        count = sum(grams.values())
        total += count
        repeated += count - len(grams)
    return repeated / total if total else 0.0


def drift_alarms(
    step: int,
    *,
    response_len: float,
    kl: float,
    repetition: float,
    start_len: float,
    start_repetition: float,
    length_fraction: float | None,
    kl_max: float | None,
    repetition_rise: float | None,
    raised: Collection[str] = (),
) -> list[Alarm]:
    """The alarms ``step`` raises: the mean response length off ``start_len`` by more than ``length_fraction``
    of it (either way), ``kl`` above ``kl_max``, the repetition rate above ``start_repetition`` by more than
    ``repetition_rise``. A threshold of None turns its alarm off; kinds in ``raised`` never fire again."""
    alarms = []
    if length_fraction is not None and "length" not in raised and start_len > 0:
        change = response_len / start_len - 1.0
        if abs(change) > length_fraction:
            alarms.append(Alarm("length", step, change, length_fraction))
    if kl_max is not None and "kl" not in raised and kl > kl_max:
        alarms.append(Alarm("kl", step, kl, kl_max))
    if repetition_rise is not None and "repetition" not in raised:
        rise = repetition - start_repetition
        if rise > repetition_rise:
            alarms.append(Alarm("repetition", step, rise, repetition_rise))
    return alarms
