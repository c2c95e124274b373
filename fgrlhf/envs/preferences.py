"""Simulated annotators' pairwise labels: Bradley–Terry sampling on the gold-reward difference, plus noise.

For responses a, b with gold scores g_a, g_b the annotator prefers a with probability
P(a ≻ b) = σ((g_a − g_b) / temperature) (temperature 0: the higher score wins, a tie is a coin flip), and
then flips its label with probability ``label_noise`` (careless annotators). Labels depend only on the seed.
"""

from __future__ import annotations

import math
import random


def bt_prob(g_a: float, g_b: float, temperature: float) -> float:
    """P(a ≻ b) under Bradley–Terry on the score difference; temperature 0 is the hard limit."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    diff = g_a - g_b
    if temperature == 0:
        return 1.0 if diff > 0 else 0.0 if diff < 0 else 0.5
    z = diff / temperature
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def sample_label(g_a: float, g_b: float, temperature: float, label_noise: float, rng: random.Random) -> bool:
    """True when the simulated annotator prefers a."""
    if not 0 <= label_noise <= 1:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    prefers_a = rng.random() < bt_prob(g_a, g_b, temperature)
    if rng.random() < label_noise:
        prefers_a = not prefers_a
    return prefers_a


def label_pairs(
    prompts: list[str],
    responses: list[tuple[str, str]],
    scores: list[tuple[float, float]],
    temperature: float,
    label_noise: float,
    seed: int,
) -> list[dict]:
    """prompt/chosen/rejected records; gold scores ride along, and ``gold_agrees`` says whether the label
    matches the gold order (False for flipped or BT-sampled-against labels)."""
    rng = random.Random(seed)
    records = []
    for prompt, (a, b), (g_a, g_b) in zip(prompts, responses, scores, strict=True):
        prefers_a = sample_label(g_a, g_b, temperature, label_noise, rng)
        chosen, rejected, g_c, g_r = (a, b, g_a, g_b) if prefers_a else (b, a, g_b, g_a)
        records.append(
            {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "gold_chosen": g_c,
                "gold_rejected": g_r,
                "gold_agrees": g_c >= g_r,
            }
        )
    return records
