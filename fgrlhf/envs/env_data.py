"""Simulated-preference data sets (``fgrlhf env-data``, :mod:`fgrlhf.envs.env_data_cli`): prompts for PPO,
eval prompts with references, gold-labelled preference pairs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Literal

from pydantic import Field

from fgrlhf.config import StrictModel

ENV_CHOICES = ("synthetic", "balanced", "alpaca-sim")
# Envs whose responses come from a grammar generator and whose policy is the SFT'd tiny Llama.
GRAMMAR_ENVS = ("synthetic", "balanced")


class GenerationConfig(StrictModel):
    """Response sampling for alpaca-sim pairs."""

    model: str = "smollm2"
    prompt_format: Literal["chat", "alpaca"] = "chat"
    max_new_tokens: int = Field(96, ge=1)
    temperature: float = Field(0.8, ge=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    batch_size: int = Field(4, ge=1)
    max_prompt_tokens: int = Field(256, ge=8)


class EnvDataConfig(StrictModel):
    n_prompts: int | None = Field(None, ge=1, description="pair prompts (default: synthetic all, alpaca-sim 8)")
    seed: int = 0
    eval_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    bt_temperature: float = Field(0.05, ge=0.0, description="Bradley–Terry temperature on gold differences")
    label_noise: float = Field(0.1, ge=0.0, le=1.0, description="probability a label is flipped")
    responses_file: str | None = None
    generation: GenerationConfig = GenerationConfig()
    sft_steps: int = Field(0, ge=0, description="synthetic/balanced only: SFT steps of the tiny policy into DIR/policy")


def _responses_from_file(path: str, prompts: list[str]) -> list[tuple[str, str]]:
    from fgrlhf.data.loading import RESPONSE_FIELDS, DataError, load_records

    by_prompt: dict[str, list[str]] = {}
    for record in load_records(path, RESPONSE_FIELDS):
        by_prompt.setdefault(record["prompt"], []).append(record["response"])
    pairs = []
    for prompt in prompts:
        found = by_prompt.get(prompt, [])
        if len(found) < 2:
            raise DataError(f"{path}: prompt {prompt[:60]!r} needs at least 2 responses, has {len(found)}")
        pairs.append((found[0], found[1]))
    return pairs


def responses_from_model(cfg: GenerationConfig, prompts: list[str], seed: int) -> list[tuple[str, str]]:
    """Two sampled answers per prompt (batches over the prompts listed twice, seeds from ``seed``)."""
    from fgrlhf.config import ModelConfig
    from fgrlhf.generation import GenerationSettings, generate_batched

    settings = GenerationSettings(**cfg.model_dump(exclude={"model", "prompt_format"}), seed=seed)
    texts = generate_batched(
        ModelConfig(name=cfg.model, prompt_format=cfg.prompt_format),
        [p for p in prompts for _ in range(2)],
        settings,
        device="cpu",
        desc="generate pairs",
    )
    return [(texts[2 * i], texts[2 * i + 1]) for i in range(len(prompts))]


def build(env: str, cfg: EnvDataConfig, out: Path) -> dict:
    from fgrlhf.config import dump_config
    from fgrlhf.data.loading import write_jsonl
    from fgrlhf.envs import load_env
    from fgrlhf.envs.preferences import label_pairs

    module = load_env(env)
    if env in GRAMMAR_ENVS:
        train, evals = module.split_prompts(cfg.eval_fraction)
        eval_records = module.eval_records(evals, cfg.seed)
    else:
        train_records, eval_records = module.split_records(module.load_eval_set(), cfg.eval_fraction)
        train = [r["prompt"] for r in train_records]
    pair_prompts = list(train)
    random.Random(cfg.seed).shuffle(pair_prompts)
    pair_prompts = pair_prompts[: cfg.n_prompts or (len(train) if env in GRAMMAR_ENVS else 8)]

    if cfg.responses_file:
        responses = _responses_from_file(cfg.responses_file, pair_prompts)
    elif env in GRAMMAR_ENVS:
        responses = [tuple(r) for r in module.sample_responses(pair_prompts, 2, cfg.seed)]
    else:
        responses = responses_from_model(cfg.generation, pair_prompts, cfg.seed)
    flat_prompts = [p for p in pair_prompts for _ in range(2)]
    flat_scores = module.gold_reward(flat_prompts, [r for pair in responses for r in pair])
    scores = list(zip(flat_scores[::2], flat_scores[1::2]))
    pairs = label_pairs(pair_prompts, responses, scores, cfg.bt_temperature, cfg.label_noise, cfg.seed)

    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    write_jsonl(out / "prompts_train.jsonl", [{"prompt": p} for p in train])
    write_jsonl(out / "prompts_eval.jsonl", eval_records)
    write_jsonl(out / "pairs.jsonl", pairs)
    summary = {
        "env": env,
        "train_prompts": len(train),
        "eval_prompts": len(eval_records),
        "pairs": len(pairs),
        "gold_mean": sum(flat_scores) / len(flat_scores),
        "label_agrees_with_gold": sum(p["gold_agrees"] for p in pairs) / len(pairs),
    }
    if env in GRAMMAR_ENVS and cfg.sft_steps:
        sft = module.sft_synthetic_policy(out / "policy", steps=cfg.sft_steps, seed=cfg.seed)
        summary["sft_heldout_loss"] = [sft["heldout_loss_before"], sft["heldout_loss_after"]]
    (out / "env_data.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
