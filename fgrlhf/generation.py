"""Batched generation outside PPO's rollout actors: one HF ``generate`` loop shared by every command that
answers prompts itself (``winrate``, policy evaluation, ``env-data``'s alpaca-sim pairs, ``figa-data``'s
rollouts, the benchmarks), so the same settings give the same texts wherever they are asked for.
"""

from __future__ import annotations

from pydantic import Field

from fgrlhf.config import ModelConfig, StrictModel


class GenerationSettings(StrictModel):
    max_prompt_tokens: int = Field(256, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    batch_size: int = Field(8, ge=1)
    seed: int = Field(0, description="the batch starting at prompt i samples with seed + i")


def generate_batched(
    model_cfg: ModelConfig,
    prompts: list[str],
    gen: GenerationSettings,
    *,
    device: str | None = None,
    desc: str = "generate",
) -> list[str]:
    """Answers to ``prompts`` (formatted with ``model_cfg.prompt_format``), ``gen.batch_size`` at a time on a
    left-padded batch; decoded text without EOS, stripped. ``device`` None: CUDA when present."""
    from tqdm import tqdm

    from fgrlhf.tokenization import encode_prompt, format_prompt
    from fgrlhf.workers.rollout_worker import HFEngine

    engine = HFEngine(model_cfg, device)
    tok = engine.tokenizer
    ids = [encode_prompt(tok, format_prompt(tok, p, model_cfg.prompt_format), gen.max_prompt_tokens) for p in prompts]
    responses = []
    for start in tqdm(range(0, len(ids), gen.batch_size), desc=desc, unit="batch"):
        out = engine.generate(
            ids[start : start + gen.batch_size], gen.max_new_tokens, gen.temperature, gen.top_p, gen.seed + start
        )
        responses += [text.strip() for text in tok.batch_decode(out, skip_special_tokens=True)]
    return responses
