"""Pairwise judges for win rates: (instruction, output_a, output_b) -> AlpacaEval preference.

A verdict's ``preference`` is 1 when output_a wins, 2 when output_b wins and 1.5 for a draw; the win-rate
code passes the reference as a and the model's output as b, so pref 2 = the model wins (AlpacaEval).

- ``gold``: the simulated environment's programmatic gold reward on both outputs; scores within
  ``epsilon`` are a draw. Offline and deterministic.
- ``claude``: Claude through the official ``anthropic`` SDK with an AlpacaEval-style pairwise prompt. Each
  pair is judged in both orders to cancel position bias; orders that disagree make a draw. Calls share the
  edit pipeline's retry policy (backoff, retry-after, one pause gate) and SQLite cache (every completed
  call is stored at once, so a re-run re-sends nothing that completed). The SDK reads ANTHROPIC_API_KEY
  and ANTHROPIC_BASE_URL itself: the key never passes through this module or into any file.
- ``rm:PATH``: a reward model scores both outputs (the offline choice on a cluster): an fgrlhf RM directory
  (its sequence score) or any HF sequence-classification RM (logit 0), in a Ray task with the GPUs asked for
  when Ray runs; scores within ``epsilon`` are a draw.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import Field

from fgrlhf.algorithms.winrate import DRAW, preference_from_scores
from fgrlhf.config import StrictModel
from fgrlhf.editing.config import AnthropicEditorConfig, RetryConfig
from fgrlhf.editing.retry import CallCounters, MalformedReply, RetryPolicy, Usage

PROMPT_VERSION = "pairwise-judge-v1"

# Modelled on AlpacaEval's ``alpaca_eval_gpt4`` annotator (its system message and instruction, without the
# worked example), with the outputs in tags so that a reply is checkable.
SYSTEM_PROMPT = (
    "You are a helpful instruction-following assistant that prints the best model by selecting the "
    "best outputs for a given instruction."
)

_USER_TEMPLATE = """\
Select the output (a) or (b) that best matches the given instruction. Choose your preferred output, which \
can be subjective. Your answer should ONLY contain: Output (a) or Output (b).

<instruction>
{instruction}
</instruction>

<output_a>
{output_a}
</output_a>

<output_b>
{output_b}
</output_b>

Which is best, Output (a) or Output (b)?"""

_VERDICT = re.compile(r"Output \(([ab])\)")


def judge_message(instruction: str, output_a: str, output_b: str) -> str:
    return _USER_TEMPLATE.format(instruction=instruction, output_a=output_a, output_b=output_b)


def parse_verdict(reply: str) -> str | None:
    """``"a"`` or ``"b"`` from the reply's last ``Output (x)`` (a reasoning preamble may name both), else None."""
    found = _VERDICT.findall(reply)
    return found[-1] if found else None


def combine_orders(first: str, second: str) -> float:
    """Preference from the verdict on (a, b) and the verdict on the swapped pair (b, a)."""
    a_wins_first, a_wins_second = first == "a", second == "b"
    if a_wins_first != a_wins_second:  # the judge followed the position, not the content
        return DRAW
    return 1.0 if a_wins_first else 2.0


@dataclass(frozen=True)
class Verdict:
    preference: float
    detail: dict = field(default_factory=dict)


class JudgeError(RuntimeError):
    """Some comparisons could not be judged (completed ones are cached; a re-run retries the rest)."""


class Judge(ABC):
    name: str

    @abstractmethod
    def compare(self, instructions: list[str], outputs_a: list[str], outputs_b: list[str]) -> list[Verdict]: ...

    def summary(self) -> dict:
        """What the judge spent (requests, retries, tokens); empty for offline judges."""
        return {}


class GoldJudge(Judge):
    name = "gold"

    def __init__(self, env: str, epsilon: float):
        from fgrlhf.envs import load_env

        self.gold = load_env(env).gold_reward
        self.epsilon = epsilon

    def compare(self, instructions: list[str], outputs_a: list[str], outputs_b: list[str]) -> list[Verdict]:
        scores_a, scores_b = self.gold(instructions, outputs_a), self.gold(instructions, outputs_b)
        return [
            Verdict(preference_from_scores(b, a, self.epsilon), {"gold_a": a, "gold_b": b})
            for a, b in zip(scores_a, scores_b)
        ]


class ClaudeJudgeConfig(StrictModel):
    """Claude judge settings; key and endpoint come from ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL."""

    model: str = AnthropicEditorConfig.model_fields["model"].default
    # Room for adaptive thinking before the one-line verdict.
    max_tokens: int = Field(4096, ge=1)
    timeout_s: float = Field(300.0, gt=0.0, description="per request")
    concurrency: int = Field(8, ge=1, description="requests in flight at once")
    cache: str = Field(str(Path.home() / ".cache" / "fgrlhf" / "judge.sqlite"), description="SQLite cache")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    input_usd_per_mtok: float = Field(AnthropicEditorConfig.model_fields["input_usd_per_mtok"].default, ge=0.0)
    output_usd_per_mtok: float = Field(AnthropicEditorConfig.model_fields["output_usd_per_mtok"].default, ge=0.0)


class ClaudeJudge(Judge):
    name = "claude"

    def __init__(self, cfg: ClaudeJudgeConfig):
        self.cfg = cfg
        self.counters = CallCounters()
        self.from_cache = 0

    def _key(self, instruction: str, first: str, second: str):
        import json

        from fgrlhf.editing.cache import CacheKey, content_hash

        pair = json.dumps([first, second], ensure_ascii=False)
        digest = content_hash(instruction, pair, f"{PROMPT_VERSION}|max_tokens={self.cfg.max_tokens}")
        return CacheKey("claude-judge", self.cfg.model, PROMPT_VERSION, digest)

    async def _judge_all(self, calls: list[tuple[str, str, str]]) -> list[str | None]:
        import anthropic

        from fgrlhf.editing.cache import CachedEdit, EditCache
        from fgrlhf.editing.editors import create_message
        from fgrlhf.editing.retry import ItemFailed, call_with_retries

        cache = EditCache(self.cfg.cache)
        verdicts: list[str | None] = [None] * len(calls)
        keys = [self._key(*call) for call in calls]
        pending = []
        for index, key in enumerate(keys):
            hit = cache.get(key)
            if hit is None:
                pending.append(index)
            else:
                verdicts[index] = hit.edited
        self.from_cache += len(calls) - len(pending)
        # max_retries=0: retry.py's policy retries (counted by cause, retry-after honoured).
        client = anthropic.AsyncAnthropic(max_retries=0, timeout=self.cfg.timeout_s)
        policy, slots = RetryPolicy(self.cfg.retry), asyncio.Semaphore(self.cfg.concurrency)

        async def attempt(instruction: str, first: str, second: str) -> tuple[str, Usage]:
            reply, usage = await create_message(
                client,
                model=self.cfg.model,
                max_tokens=self.cfg.max_tokens,
                system=SYSTEM_PROMPT,
                messages=[{"role": "user", "content": judge_message(instruction, first, second)}],
            )
            verdict = parse_verdict(reply)
            if verdict is None:
                raise MalformedReply(usage)
            return verdict, usage

        async def one(index: int) -> None:
            async with slots:
                try:
                    verdict, usage = await call_with_retries(lambda: attempt(*calls[index]), policy, self.counters)
                except ItemFailed:
                    return  # stays None: reported below, retried by the next run
            self.counters.add_usage(usage)
            cache.put(keys[index], CachedEdit(verdict, usage))
            verdicts[index] = verdict

        tasks = [asyncio.ensure_future(one(index)) for index in pending]
        try:
            await asyncio.gather(*tasks)
        finally:  # a fatal error (bad key) stops the rest; what completed is already cached
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
            cache.close()
        return verdicts

    def compare(self, instructions: list[str], outputs_a: list[str], outputs_b: list[str]) -> list[Verdict]:
        calls = [(i, a, b) for i, a, b in zip(instructions, outputs_a, outputs_b)]
        calls += [(i, b, a) for i, a, b in zip(instructions, outputs_a, outputs_b)]
        results = asyncio.run(self._judge_all(calls))
        verdicts = [v for v in results if v is not None]
        if failed := len(results) - len(verdicts):
            raise JudgeError(
                f"{failed} of {len(calls)} judge calls failed after retries; completed calls are "
                f"cached in {self.cfg.cache}, re-run to retry only the rest"
            )
        n = len(instructions)
        return [
            Verdict(combine_orders(first, second), {"order_ab": first, "order_ba": second})
            for first, second in zip(verdicts[:n], verdicts[n:])
        ]

    def summary(self) -> dict:
        c = self.counters
        cost = (c.input_tokens * self.cfg.input_usd_per_mtok + c.output_tokens * self.cfg.output_usd_per_mtok) / 1e6
        return {
            "model": self.cfg.model,
            "requests": c.requests,
            "from_cache": self.from_cache,
            "retries": dict(c.retries),
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            "cost_usd": round(cost, 6),
        }


class RewardModelJudge(Judge):
    """``rm:PATH``: the output the reward model scores higher wins."""

    def __init__(self, path: str, epsilon: float, num_gpus: float = 0.0, num_cpus: float = 1.0):
        self.name = f"rm:{path}"
        self.path, self.epsilon = path, epsilon
        self.num_gpus, self.num_cpus = num_gpus, num_cpus

    def compare(self, instructions: list[str], outputs_a: list[str], outputs_b: list[str]) -> list[Verdict]:
        import ray

        args = (self.path, instructions * 2, outputs_a + outputs_b)
        if ray.is_initialized():
            scores = ray.get(
                ray.remote(num_gpus=self.num_gpus, num_cpus=self.num_cpus)(score_with_reward_model).remote(*args)
            )
        else:
            scores = score_with_reward_model(*args)
        n = len(instructions)
        return [
            Verdict(preference_from_scores(b, a, self.epsilon), {"rm_a": a, "rm_b": b})
            for a, b in zip(scores[:n], scores[n:])
        ]


def score_with_reward_model(path: str, instructions: list[str], outputs: list[str], batch_size: int = 8) -> list[float]:
    """One scalar per (instruction, output): an fgrlhf RM's sequence score with its own prompt format and
    lengths, else an HF sequence-classification model's first logit on its chat template."""
    import torch

    from fgrlhf.models import load_tokenizer
    from fgrlhf.runtime.distributed import choose_device

    tokenizer = load_tokenizer(path)
    device = choose_device()  # in a Ray task: the GPU Ray assigned, else CPU (even where every GPU is visible)
    try:
        from fgrlhf.reward.model import load_reward_model, read_reward_info

        info = read_reward_info(path)
    except ValueError:  # not an fgrlhf RM: a plain HF reward model
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": i}, {"role": "assistant", "content": o}], tokenize=False
            )
            for i, o in zip(instructions, outputs)
        ]
        scores: list[float] = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start : start + batch_size], return_tensors="pt", padding=True, truncation=True)
                scores += model(**batch.to(device)).logits[:, 0].float().tolist()
        return scores
    from fgrlhf.tokenization import encode_example, format_prompt

    rm = load_reward_model(path).to(device).eval()
    examples = [
        encode_example(
            tokenizer,
            format_prompt(tokenizer, i, info.get("prompt_format", "chat")),
            o,
            info.get("max_prompt_tokens", 192),
            info.get("max_response_tokens", 300),
        )
        for i, o in zip(instructions, outputs)
    ]
    with torch.no_grad():
        result = rm.score(
            [e.prompt_ids for e in examples], [e.response_ids for e in examples], tokenizer.pad_token_id, batch_size
        )
    return result["sequence"].float().tolist()


def build_judge(
    kind: str,
    env: str,
    epsilon: float = 0.01,
    claude: ClaudeJudgeConfig | None = None,
    rm_resources: dict | None = None,
) -> Judge:
    if kind == "gold":
        return GoldJudge(env, epsilon)
    if kind == "claude":
        return ClaudeJudge(claude or ClaudeJudgeConfig())
    if kind.startswith("rm:") and len(kind) > 3:
        return RewardModelJudge(kind[3:], epsilon, **(rm_resources or {}))
    raise ValueError(f"unknown judge {kind!r}; choose gold, claude or rm:PATH")
