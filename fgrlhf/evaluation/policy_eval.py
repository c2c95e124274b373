"""Gold-reward evaluation of policies on held-out prompts, shared by FIGA, SFT and PPO runs.

A policy (``tiny``, ``smollm2`` or an HF checkpoint directory) answers the prompts
(:func:`fgrlhf.generation.generate_batched`, greedy by default) and a gold hook ``module:function`` taking
``(prompts, responses) -> list[float]`` (e.g. ``fgrlhf.envs.alpaca_sim:gold_reward``) scores them. :func:`compare` evaluates a base and a trained policy
on the same prompts and writes one ``eval.json`` whose ``summary`` rows have the same keys for every
method, so runs can be tabulated side by side.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from pydantic import Field

from fgrlhf.config import ModelConfig, StrictModel
from fgrlhf.data.loading import ALPACA_EVAL_SET
from fgrlhf.envs import load_gold
from fgrlhf.generation import GenerationSettings, generate_batched


class PolicyEvalConfig(StrictModel):
    gold_reward: str = Field(description="'module:function' taking (prompts, responses) -> list[float]")
    prompts_path: str = ALPACA_EVAL_SET
    heldout_fraction: float | None = Field(
        0.2,
        gt=0.0,
        le=1.0,
        description="keep prompts in this hash split (fgrlhf.envs.in_eval_split, the envs' eval split); "
        "None = all prompts",
    )
    limit: int | None = Field(None, ge=1, description="first N held-out prompts")
    generation: GenerationSettings = GenerationSettings()


def heldout_prompts(cfg: PolicyEvalConfig) -> list[str]:
    from fgrlhf.data.loading import load_prompts
    from fgrlhf.envs import in_eval_split

    prompts = [r["prompt"] for r in load_prompts(cfg.prompts_path)]
    if cfg.heldout_fraction is not None:
        prompts = [p for p in prompts if in_eval_split(p, cfg.heldout_fraction)]
    if not prompts:
        raise ValueError(f"{cfg.prompts_path}: no prompt falls in the held-out fraction {cfg.heldout_fraction}")
    return prompts[: cfg.limit] if cfg.limit else prompts


def evaluate_policy(model_cfg: ModelConfig, prompts: list[str], cfg: PolicyEvalConfig, label: str) -> dict:
    responses = generate_batched(model_cfg, prompts, cfg.generation, desc=f"eval {label}")
    scores = [float(s) for s in load_gold(cfg.gold_reward)(prompts, responses)]
    if len(scores) != len(prompts):
        raise ValueError(f"gold_reward {cfg.gold_reward!r} returned {len(scores)} scores for {len(prompts)} prompts")
    stderr = statistics.stdev(scores) / math.sqrt(len(scores)) if len(scores) > 1 else float("nan")
    return {
        "summary": {
            "policy": label,
            "model": model_cfg.name,
            "n": len(scores),
            "gold_mean": statistics.fmean(scores),
            "gold_stderr": stderr,
        },
        "rows": [{"prompt": p, "response": r, "gold": s} for p, r, s in zip(prompts, responses, scores)],
    }


def compare(before: ModelConfig, after: ModelConfig, cfg: PolicyEvalConfig, out_path: str | Path, method: str) -> dict:
    """Evaluate ``before`` and ``after`` on the same held-out prompts; write and return the report."""
    prompts = heldout_prompts(cfg)
    results = {
        "before": evaluate_policy(before, prompts, cfg, "before"),
        "after": evaluate_policy(after, prompts, cfg, "after"),
    }
    report = {
        "method": method,
        "gold_reward": cfg.gold_reward,
        "summary": [dict(results[k]["summary"], method=method) for k in ("before", "after")],
        "gold_delta": results["after"]["summary"]["gold_mean"] - results["before"]["summary"]["gold_mean"],
        "rows": {k: v["rows"] for k, v in results.items()},
    }
    Path(out_path).write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return report
