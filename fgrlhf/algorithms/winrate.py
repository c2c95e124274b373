"""AlpacaFarm/AlpacaEval win rate: 100 · mean(pref − 1) with its standard error.

pref is 1 when the reference output wins, 2 when the model's wins, 1.5 for a draw. The standard error is
100 · sd(pref − 1) / sqrt(n) with the sample standard deviation (ddof 1), as AlpacaEval's
``pandas.Series.sem``; it is 0 for a single instruction.
"""

from __future__ import annotations

import math
from typing import Any

REFERENCE_WINS, MODEL_WINS, DRAW = 1.0, 2.0, 1.5


def preference_from_scores(model_score: float, reference_score: float, epsilon: float = 0.0) -> float:
    """pref of a scalar judge: scores within ``epsilon`` of each other are a draw."""
    if abs(model_score - reference_score) <= epsilon:
        return DRAW
    return MODEL_WINS if model_score > reference_score else REFERENCE_WINS


def win_rate(prefs: list[float]) -> dict[str, Any]:
    """``{win_rate, stderr, n, wins, losses, draws}``; wins/losses count prefs above/below 1.5."""
    if not prefs:
        raise ValueError("win rate of zero instructions")
    for pref in prefs:
        if not 1.0 <= pref <= 2.0:
            raise ValueError(f"preference {pref} outside [1, 2]")
    n = len(prefs)
    values = [pref - 1 for pref in prefs]
    mean = sum(values) / n
    stderr = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else 0.0
    return {
        "win_rate": 100 * mean,
        "stderr": 100 * stderr,
        "n": n,
        "wins": sum(p > DRAW for p in prefs),
        "losses": sum(p < DRAW for p in prefs),
        "draws": sum(p == DRAW for p in prefs),
    }
