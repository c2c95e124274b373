"""Simulated-preference environments with a known gold reward (``synthetic``, ``balanced``, ``alpaca-sim``).

Each environment module exposes ``NAME``, ``GOLD`` (a :class:`fgrlhf.envs.gold.GoldSpec`) and the gold hook
``gold_reward(prompts, responses) -> list[float]`` that PPO/FIGA configs name as ``gold_reward``.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from types import ModuleType

ENVS = {
    "synthetic": "fgrlhf.envs.synthetic",
    "balanced": "fgrlhf.envs.balanced",
    "alpaca-sim": "fgrlhf.envs.alpaca_sim",
}


def load_env(name: str) -> ModuleType:
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r}; choose one of {sorted(ENVS)}")
    return importlib.import_module(ENVS[name])


def load_gold(spec: str) -> Callable[[list[str], list[str]], list[float]]:
    """The gold hook named ``module:function`` (e.g. ``fgrlhf.envs.synthetic:gold_reward``), imported now so
    a wrong name fails before any model or actor starts."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"gold_reward {spec!r}: expected 'module:function'")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"gold_reward {spec!r}: {exc}") from None


def in_eval_split(prompt: str, eval_fraction: float) -> bool:
    """Deterministic split by a hash of the prompt text (stable across runs, machines and Python)."""
    bucket = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < eval_fraction
