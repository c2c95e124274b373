"""Simulated-preference environments with a known gold reward (``synthetic``, ``alpaca-sim``).

Each environment module exposes ``NAME``, ``GOLD`` (a :class:`fgrlhf.envs.gold.GoldSpec`) and the gold hook
``gold_reward(prompts, responses) -> list[float]`` that PPO/FIGA configs name as ``gold_reward``.
"""

from __future__ import annotations

import hashlib
import importlib
from types import ModuleType

ENVS = {"synthetic": "fgrlhf.envs.synthetic", "alpaca-sim": "fgrlhf.envs.alpaca_sim"}


def load_env(name: str) -> ModuleType:
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; choose one of {sorted(ENVS)}")
    return importlib.import_module(ENVS[name])


def in_eval_split(prompt: str, eval_fraction: float) -> bool:
    """Deterministic split by a hash of the prompt text (stable across runs, machines and Python)."""
    bucket = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < eval_fraction
