"""Pairwise judges for win rates: (instruction, output_a, output_b) -> AlpacaEval preference.

A verdict's ``preference`` is 1 when output_a wins, 2 when output_b wins and 1.5 for a draw; the win-rate
code passes the reference as a and the model's output as b, so pref 2 = the model wins (AlpacaEval).

- ``gold``: the simulated environment's programmatic gold reward on both outputs; scores within
  ``epsilon`` are a draw. Offline and deterministic.
- ``claude``: Claude through the official ``anthropic`` SDK with an AlpacaEval-style pairwise prompt. Position
  bias: ``positions="random"`` (AlpacaEval's way) judges each pair once, with output_b shown first or second
  by a coin drawn from a hash of the comparison (so a re-run, and the cache, see the same order), and maps
  the verdict back; ``"both"`` judges both orders, and orders that disagree make a draw. Requests go one by
  one with the edit pipeline's retry policy (backoff, retry-after, one pause gate), or with ``batch`` as
  Message Batches at half price through the edit pipeline's batch machinery (:mod:`fgrlhf.editing.batch`:
  chunks, polling, resubmission of failed items, re-attachment to the batches of an interrupted run). Both
  share its SQLite cache, keyed by (prompt, ordered pair): every completed call is stored, so a re-run
  re-sends nothing that completed. The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself: the key
  never passes through this module or into any file.
- ``rm:PATH``: a reward model scores both outputs (the offline choice on a cluster): an fgrlhf RM directory
  (its sequence score) or any HF sequence-classification RM (logit 0), in a Ray task with the GPUs asked for
  when Ray runs; scores within ``epsilon`` are a draw.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fgrlhf.algorithms.winrate import DRAW, preference_from_scores
from fgrlhf.config import StrictModel
from fgrlhf.editing.config import AnthropicEditorConfig, BatchConfig, RetryConfig
from fgrlhf.editing.retry import CallCounters, MalformedReply, RetryPolicy, Usage

if TYPE_CHECKING:
    from fgrlhf.editing.editors import EditReply

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


def verdict_reply(reply: str, usage: Usage) -> EditReply:
    """The verdict of a reply as the cache stores it (an :class:`EditReply`); MalformedReply without one."""
    from fgrlhf.editing.editors import EditReply

    verdict = parse_verdict(reply)
    if verdict is None:
        raise MalformedReply(usage)
    return EditReply(verdict, usage)


def judge_request(model: str, max_tokens: int, instruction: str, first: str, second: str) -> dict:
    """Messages API parameters of one judgement of (first, second): sent at once, or in a Message Batch."""
    return {
        "model": model,
        "max_tokens": max_tokens,
        "system": SYSTEM_PROMPT,
        "messages": [{"role": "user", "content": judge_message(instruction, first, second)}],
    }


def model_first(instruction: str, output_a: str, output_b: str) -> bool:
    """Whether output_b (the model's answer in a win rate) is shown first: a fair coin seeded by the comparison.

    AlpacaEval switches the two outputs by a coin seeded from the example (``is_switched_outputs``), so that
    the position bias of a judge averages out over a set without paying for both orders; seeding it from a
    hash of the whole comparison makes a re-run draw the same order and so hit the cache.
    """
    digest = hashlib.sha256(json.dumps(["is_switched_outputs", instruction, output_a, output_b]).encode("utf-8"))
    return digest.digest()[0] & 1 == 1


def unswitch(verdict: str, switched: bool) -> float:
    """Preference of output_a over output_b from the verdict on the pair as shown (switched: (b, a))."""
    return 1.0 if (verdict == "a") != switched else 2.0


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
    positions: Literal["random", "both"] = Field(
        "random",
        description="random: one request per comparison, the model's output first or second by a seeded coin "
        "(AlpacaEval); both: both orders, a disagreement is a draw (twice the requests)",
    )
    batch: bool = Field(False, description="send the uncached comparisons as Message Batches (half price, <= 24 h)")
    poll_interval_s: float = Field(60.0, gt=0.0, description="batch: seconds between status checks of open batches")
    batch_price_factor: float = Field(
        BatchConfig.model_fields["price_factor"].default, ge=0.0, description="batch: batch price / list price"
    )
    timeout_s: float = Field(300.0, gt=0.0, description="per request")
    concurrency: int = Field(8, ge=1, description="requests in flight at once (without batch)")
    cache: str = Field(str(Path.home() / ".cache" / "fgrlhf" / "judge.sqlite"), description="SQLite cache")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    input_usd_per_mtok: float = Field(AnthropicEditorConfig.model_fields["input_usd_per_mtok"].default, ge=0.0)
    output_usd_per_mtok: float = Field(AnthropicEditorConfig.model_fields["output_usd_per_mtok"].default, ge=0.0)

    def price_factor(self) -> float:
        """What a request costs relative to list price."""
        return self.batch_price_factor if self.batch else 1.0

    def requests_per_comparison(self) -> int:
        return 2 if self.positions == "both" else 1


class ClaudeJudge(Judge):
    name = "claude"

    def __init__(self, cfg: ClaudeJudgeConfig):
        self.cfg = cfg
        self.counters = CallCounters()
        self.from_cache = 0

    def _scope(self):
        """The cache rows (and recorded batches) of this judge's model and prompt."""
        from fgrlhf.editing.cache import CacheKey

        return CacheKey("claude-judge", self.cfg.model, PROMPT_VERSION, "")

    def _key(self, instruction: str, first: str, second: str):
        from fgrlhf.editing.cache import content_hash

        pair = json.dumps([first, second], ensure_ascii=False)
        digest = content_hash(instruction, pair, f"{PROMPT_VERSION}|max_tokens={self.cfg.max_tokens}")
        return replace(self._scope(), content_hash=digest)

    def _request(self, instruction: str, first: str, second: str) -> dict:
        return judge_request(self.cfg.model, self.cfg.max_tokens, instruction, first, second)

    async def _judge_all(self, calls: list[tuple[str, str, str]]) -> tuple[list[str | None], list[str | None]]:
        """Verdict (or None) and failure reason (or None) per call, one request at a time per slot."""
        import anthropic

        from fgrlhf.editing.cache import CachedEdit, EditCache
        from fgrlhf.editing.editors import create_message
        from fgrlhf.editing.retry import ItemFailed, call_with_retries

        cache = EditCache(self.cfg.cache)
        verdicts: list[str | None] = [None] * len(calls)
        failures: list[str | None] = [None] * len(calls)
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

        async def attempt(instruction: str, first: str, second: str) -> EditReply:
            return verdict_reply(*await create_message(client, **self._request(instruction, first, second)))

        async def one(index: int) -> None:
            async with slots:
                try:
                    reply = await call_with_retries(lambda: attempt(*calls[index]), policy, self.counters)
                except ItemFailed as exc:
                    failures[index] = str(exc)  # reported by compare, retried by the next run
                    return
            self.counters.add_usage(reply.usage)
            cache.put(keys[index], CachedEdit(reply.edited, reply.usage))
            verdicts[index] = reply.edited

        tasks = [asyncio.ensure_future(one(index)) for index in pending]
        try:
            await asyncio.gather(*tasks)
        finally:  # a fatal error (bad key) stops the rest; what completed is already cached
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()
            cache.close()
        return verdicts, failures

    async def _judge_batch(self, calls: list[tuple[str, str, str]]) -> tuple[list[str | None], list[str | None]]:
        """:meth:`_judge_all`'s result through Message Batches (:mod:`fgrlhf.editing.batch`): their ids are
        recorded in the cache as they are created, so the next run after an interruption re-attaches to them
        instead of paying again."""
        import anthropic

        from fgrlhf.editing.batch import BatchJob, batch_lock, pending_items, run_batches
        from fgrlhf.editing.cache import EditCache

        cache = EditCache(self.cfg.cache)
        verdicts: list[str | None] = [None] * len(calls)
        failures: list[str | None] = [None] * len(calls)
        keys = [self._key(*call) for call in calls]
        client = anthropic.AsyncAnthropic(max_retries=0, timeout=self.cfg.timeout_s)
        job = BatchJob(client, self._scope(), lambda index: self._request(*calls[index]), verdict_reply)
        batching = BatchConfig(enabled=True, poll_interval_s=self.cfg.poll_interval_s)
        try:
            async with batch_lock(cache):
                pending = pending_items(keys, cache, verdicts)
                self.from_cache += len(calls) - sum(len(indices) for indices in pending.values())
                await run_batches(
                    job, cache, batching, self.cfg.retry, self.counters, pending, verdicts, failures, "judge", False
                )
        finally:
            await client.close()
            cache.close()
        return verdicts, failures

    def compare(self, instructions: list[str], outputs_a: list[str], outputs_b: list[str]) -> list[Verdict]:
        comparisons = list(zip(instructions, outputs_a, outputs_b))
        if self.cfg.positions == "both":
            switched = [False] * len(comparisons) + [True] * len(comparisons)
            comparisons += comparisons
        else:
            switched = [model_first(*comparison) for comparison in comparisons]
        calls = [(i, b, a) if s else (i, a, b) for (i, a, b), s in zip(comparisons, switched)]
        judge = self._judge_batch if self.cfg.batch else self._judge_all
        results, failures = asyncio.run(judge(calls))
        verdicts = [v for v in results if v is not None]
        if failed := len(results) - len(verdicts):
            reason = next(f for f in failures if f is not None)
            raise JudgeError(
                f"{failed} of {len(calls)} judge calls failed after retries (first: {reason}); completed calls "
                f"are cached in {self.cfg.cache}, re-run to retry only the rest"
            )
        n = len(instructions)
        if self.cfg.positions == "both":
            return [
                Verdict(combine_orders(first, second), {"order_ab": first, "order_ba": second})
                for first, second in zip(verdicts[:n], verdicts[n:])
            ]
        return [
            Verdict(unswitch(verdict, switch), {"model_first": switch, "verdict": verdict})
            for verdict, switch in zip(verdicts, switched)
        ]

    def summary(self) -> dict:
        c, cfg = self.counters, self.cfg
        list_price = c.input_tokens * cfg.input_usd_per_mtok + c.output_tokens * cfg.output_usd_per_mtok
        return {
            "model": cfg.model,
            "requests": c.requests,
            "from_cache": self.from_cache,
            "retries": dict(c.retries),
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            # Only what this judge sent is counted (cache hits are free), all of it at this mode's price.
            "cost_usd": round(list_price * cfg.price_factor() / 1e6, 6),
            "batch": cfg.batch,
            "positions": cfg.positions,
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
