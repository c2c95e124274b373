"""Minimal editors behind one interface: Claude (Messages API), a local HF model, and regex rules.

An editor turns (instruction, response) into the edited response or raises one of the classified errors
of :mod:`fgrlhf.editing.retry`; it never retries itself (the pipeline's retry policy does).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import inspect
import itertools
import json
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic import Field, ValidationError

from fgrlhf.config import ConfigError, ModelConfig, StrictModel
from fgrlhf.editing.config import AnthropicEditorConfig, EditConfig, HFEditorConfig, RuleEditorConfig
from fgrlhf.editing.prompts import PROMPT_VERSION, SYSTEM_PROMPT, parse_reply, user_message
from fgrlhf.editing.retry import (
    FatalError,
    MalformedReply,
    PermanentError,
    TransientError,
    Usage,
    parse_retry_after,
)


@dataclass(frozen=True)
class EditReply:
    edited: str
    usage: Usage


class Editor(ABC):
    name: str
    model: str
    # A deterministic editor repeats a malformed reply, so retrying one is pointless.
    deterministic: bool = False

    def fingerprint(self) -> str:
        """Settings besides the input that determine the reply; part of the cache key."""
        return PROMPT_VERSION

    @abstractmethod
    async def edit(self, instruction: str, text: str) -> EditReply: ...

    def explain(self, instruction: str, text: str) -> dict[str, dict[str, int]] | None:
        """What an edit of ``text`` fixes, per fault kind, if the editor knows (deterministic rule editors)."""
        return None

    async def aclose(self) -> None:
        return None


class ClaudeEditor(Editor):
    name = "anthropic"

    def __init__(self, cfg: AnthropicEditorConfig):
        import anthropic

        self.cfg = cfg
        self.model = cfg.model
        # max_retries=0: the pipeline's policy retries (counted by cause, retry-after honoured, testable).
        # The SDK reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL itself, so the key never passes through us.
        self.client = anthropic.AsyncAnthropic(max_retries=0, timeout=cfg.timeout_s)

    def fingerprint(self) -> str:
        return f"{PROMPT_VERSION}|max_tokens={self.cfg.max_tokens}"

    def request(self, instruction: str, text: str) -> dict:
        """Messages API parameters of one edit: sent at once by :meth:`edit`, or in a Message Batch."""
        return {
            "model": self.cfg.model,
            "max_tokens": self.cfg.max_tokens,
            "system": SYSTEM_PROMPT,
            "messages": [{"role": "user", "content": user_message(instruction, text)}],
        }

    @staticmethod
    def reply(text: str, usage: Usage) -> EditReply:
        """The edit in a reply's text; MalformedReply (its tokens were still spent) without the tags."""
        edited = parse_reply(text)
        if edited is None:
            raise MalformedReply(usage)
        return EditReply(edited, usage)

    async def edit(self, instruction: str, text: str) -> EditReply:
        return self.reply(*await create_message(self.client, **self.request(instruction, text)))

    async def aclose(self) -> None:
        await self.client.close()


async def create_message(client, **request) -> tuple[str, Usage]:
    """``client.messages.create(**request)`` -> (reply text, usage), with SDK errors classified into the
    exceptions of :mod:`fgrlhf.editing.retry` (shared by the Claude editor and the Claude judge)."""
    return message_reply(await call_api(client.messages.create(**request)))


def message_reply(message) -> tuple[str, Usage]:
    """The text blocks of a Messages API reply, and its usage."""
    usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
    return "".join(block.text for block in message.content if block.type == "text"), usage


async def call_api(awaitable):
    """Await one SDK call, with its errors classified into the exceptions of :mod:`fgrlhf.editing.retry`."""
    import anthropic as sdk

    try:
        return await awaitable
    except sdk.APITimeoutError:
        raise TransientError("timeout") from None
    except sdk.APIConnectionError as exc:
        raise TransientError("connection", detail=type(exc).__name__) from None
    except (sdk.AuthenticationError, sdk.PermissionDeniedError) as exc:
        raise FatalError(f"HTTP {exc.status_code} {exc.type or ''}: check ANTHROPIC_API_KEY") from None
    except sdk.APIStatusError as exc:
        raise classify_status(exc.status_code, exc.type, exc.response.headers) from None


def classify_status(status: int, error_type: str | None, headers: Mapping[str, str]) -> Exception:
    """Map an HTTP error of the Messages API to transient (retry) or permanent (fail the item)."""
    retry_after = parse_retry_after(headers)
    should_retry = headers.get("x-should-retry")  # the API's own hint overrides the status code
    causes = {429: "rate_limit", 529: "overloaded", 408: "timeout", 409: "conflict"}
    if should_retry == "true" or (should_retry != "false" and (status in causes or status >= 500)):
        return TransientError(causes.get(status, "server_error"), retry_after, detail=f"HTTP {status}")
    return PermanentError(f"HTTP {status} {error_type or ''}".rstrip())


class HFEditor(Editor):
    """The same prompt through a local model's chat template; one generation at a time in a thread."""

    name = "hf"

    def __init__(self, cfg: HFEditorConfig):
        import torch

        from fgrlhf.models import load_causal_lm, load_tokenizer

        self.cfg = cfg
        self.model = cfg.model
        self.deterministic = not cfg.do_sample
        self._torch = torch
        self._tokenizer = load_tokenizer(cfg.model)
        self._lm = load_causal_lm(ModelConfig(name=cfg.model, seed=cfg.seed), self._tokenizer).eval()
        self._lock = threading.Lock()  # parallel CPU generations only fight over the cores

    def fingerprint(self) -> str:
        sampling = f"sample(t={self.cfg.temperature},p={self.cfg.top_p},seed={self.cfg.seed})"
        return f"{PROMPT_VERSION}|max_new={self.cfg.max_new_tokens}|{sampling if self.cfg.do_sample else 'greedy'}"

    def _generate(self, instruction: str, text: str) -> tuple[str, Usage]:
        from fgrlhf.tokenization import tokenize_prompt  # transformers only when an HF editor runs

        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_message(instruction, text)},
        ]
        # tokenize=False returns the text; transformers types it as every form it can return.
        prompt = cast(str, self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        prompt_ids = self._torch.tensor([tokenize_prompt(self._tokenizer, prompt)])
        ids = {"input_ids": prompt_ids, "attention_mask": self._torch.ones_like(prompt_ids)}
        sampling = (
            {"do_sample": True, "temperature": self.cfg.temperature, "top_p": self.cfg.top_p}
            if self.cfg.do_sample
            else {"do_sample": False}
        )
        with self._lock, self._torch.no_grad():
            if self.cfg.do_sample:  # reproducible per item, whatever order items arrive in
                self._torch.manual_seed(_stable_int(f"{self.cfg.seed}|{instruction}|{text}"))
            out = self._lm.generate(**ids, max_new_tokens=self.cfg.max_new_tokens, **sampling)
        new = out[0, ids["input_ids"].shape[1] :]
        reply = cast(str, self._tokenizer.decode(new, skip_special_tokens=True))  # one sequence in, one string out
        return reply, Usage(int(ids["input_ids"].shape[1]), int(new.shape[0]))

    async def edit(self, instruction: str, text: str) -> EditReply:
        reply, usage = await asyncio.to_thread(self._generate, instruction, text)
        edited = parse_reply(reply)
        if edited is None:
            raise MalformedReply(usage)
        return EditReply(edited, usage)


class Rule(StrictModel):
    """A regex rewrite; every match is one fault."""

    name: str
    pattern: str
    replacement: str
    recall: float | None = Field(None, ge=0.0, le=1.0, description="this fault's recall (× the editor's)")


class FixerRule(StrictModel):
    """A prompt-aware rule: ``fixer`` names a ``module:function`` hook called as
    ``fixer(instruction, text, **options)`` that returns one ``(start, end, replacement)`` span of ``text``
    per fault it finds (non-overlapping). Faults that need the instruction (off-topic content, a missing
    aspect, a wrong length) cannot be written as a regex."""

    name: str
    fixer: str
    options: dict[str, Any] = Field(default_factory=dict)
    recall: float | None = Field(None, ge=0.0, le=1.0, description="this fault's recall (× the editor's)")


Fix = tuple[int, int, str]
Fixer = Callable[..., list[Fix]]
LoadedRule = tuple[Rule, re.Pattern[str]] | tuple[FixerRule, Fixer]


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


@functools.lru_cache(maxsize=16)
def _digest(text: str) -> str:
    """The draws of one response share this; the cache hits by identity, so each call after the first is O(1)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_rules(path: str | Path) -> list[LoadedRule]:
    """A YAML list of regex rules {name, pattern, replacement[, recall]} and fixer rules
    {name, fixer, options[, recall]}; errors name the file, the rule and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))  # a UTF-8 BOM is allowed
    except FileNotFoundError:
        raise ConfigError(f"rules file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"rules {path}: is a directory, expected a YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of rules {{name, pattern, replacement}}")
    rules: list[LoadedRule] = []
    for index, raw in enumerate(data):
        kind = FixerRule if isinstance(raw, dict) and "fixer" in raw else Rule
        try:
            rule = kind.model_validate(raw)
        except ValidationError as exc:
            fields = ", ".join(f"{'.'.join(map(str, e['loc'])) or '<rule>'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{path}: rule {index}: {fields}") from None
        if isinstance(rule, FixerRule):
            try:
                rules.append((rule, _load_fixer(rule)))
            except ValueError as exc:
                raise ConfigError(f"{path}: rule {index} ({rule.name}): {exc}") from None
            continue
        try:
            compiled = re.compile(rule.pattern)
            _check_replacement(compiled, rule.replacement)
        except re.error as exc:
            raise ConfigError(f"{path}: rule {index} ({rule.name}): bad regex: {exc}") from None
        rules.append((rule, compiled))
    return rules


def _load_fixer(rule: FixerRule) -> Fixer:
    """Import ``rule.fixer`` and check now that it accepts ``(instruction, text, **options)``."""
    module_name, sep, attr = rule.fixer.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"fixer {rule.fixer!r}: expected 'module:function'")
    try:
        fixer = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"fixer {rule.fixer!r}: {exc}") from None
    try:
        inspect.signature(fixer).bind("", "", **rule.options)
    except TypeError as exc:
        raise ValueError(f"options {sorted(rule.options)} do not fit {rule.fixer}: {exc}") from None
    return fixer


def _check_replacement(pattern: re.Pattern, replacement: str) -> None:
    """Raise re.error now for a bad group reference that would otherwise fail at the first match."""
    names = {index: name for name, index in pattern.groupindex.items()}
    groups = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, pattern.groups + 1))
    re.compile(groups).sub(replacement, "")  # an empty pattern with the same groups always matches


class RuleEditor(Editor):
    """Deterministic rewrites (regex and prompt-aware fixer rules) that fix a ``recall`` fraction of the faults.

    Rules apply in file order, each to the previous one's output. Whether one fault is fixed depends only on
    (seed, rule name, fault ordinal, input text), so a run is reproducible and independent of order and
    concurrency: a simulated annotator who misses some faults. A rule's own ``recall`` multiplies the
    editor's, so ``rule.recall`` still scales every rule.
    """

    name = "rule"
    deterministic = True

    def __init__(self, cfg: RuleEditorConfig):
        self.cfg = cfg
        self.model = Path(cfg.rules).name
        self.rules = load_rules(cfg.rules)
        # exclude_none: a rule without its own recall hashes as before the field existed (caches stay valid).
        rules_json = json.dumps([rule.model_dump(exclude_none=True) for rule, _ in self.rules], sort_keys=True)
        self._rules_hash = hashlib.sha256(rules_json.encode("utf-8")).hexdigest()[:16]

    def fingerprint(self) -> str:
        return f"rules={self._rules_hash}|recall={self.cfg.recall}|seed={self.cfg.seed}|draws=digest"

    def _fixes(self, text: str, rule: Rule | FixerRule, ordinal: int) -> bool:
        recall = self.cfg.recall * (1.0 if rule.recall is None else rule.recall)
        # The response enters as its digest, hashed once per response, not once per match (k matches in an
        # n-byte response would hash k·n bytes).
        draw = _stable_int(f"{self.cfg.seed}\0{rule.name}\0{ordinal}\0{_digest(text)}") / 2**64
        return draw < recall

    def apply_traced(self, text: str, instruction: str = "") -> tuple[str, dict[str, dict[str, int]]]:
        """The edited text and, per rule that fixed something, ``{"fixed": faults, "delta_words": Δ}``
        (words added by that rule's fixes; negative when it shortens)."""
        edited, trace = text, {}
        for loaded in self.rules:
            rule, before = loaded[0], edited
            if isinstance(loaded[0], FixerRule):  # narrows the pair: a fixer rule with its function
                fixer_rule, fixer = loaded
                chosen = [
                    fix
                    for ordinal, fix in enumerate(fixer(instruction, edited, **fixer_rule.options))
                    if self._fixes(text, fixer_rule, ordinal)
                ]
                edited = _splice(edited, chosen, rule.name)
                fixed = len(chosen)
            else:
                regex_rule, compiled = loaded
                ordinal, fixed = itertools.count(), 0

                def replace(match: re.Match, rule: Rule = regex_rule, ordinal: Iterator[int] = ordinal) -> str:
                    nonlocal fixed
                    if not self._fixes(text, rule, next(ordinal)):
                        return match.group(0)
                    fixed += 1
                    return match.expand(rule.replacement)

                edited = compiled.sub(replace, edited)
            if fixed:
                trace[rule.name] = {"fixed": fixed, "delta_words": len(edited.split()) - len(before.split())}
        return edited, trace

    def apply(self, text: str, instruction: str = "") -> str:
        return self.apply_traced(text, instruction)[0]

    def explain(self, instruction: str, text: str) -> dict[str, dict[str, int]]:
        return self.apply_traced(text, instruction)[1]

    async def edit(self, instruction: str, text: str) -> EditReply:
        try:
            return EditReply(self.apply(text, instruction), Usage())
        except ValueError as exc:  # a fixer that cannot read this input: the item fails, the run goes on
            raise PermanentError(str(exc)) from None


def _splice(text: str, fixes: list[Fix], rule_name: str) -> str:
    """Apply non-overlapping ``(start, end, replacement)`` spans of ``text``."""
    out, position = [], 0
    for start, end, replacement in sorted(fixes):
        if start < position or end < start or end > len(text):
            raise ValueError(f"rule {rule_name}: fixer returned overlapping or out-of-range span {(start, end)}")
        out += [text[position:start], replacement]
        position = end
    return "".join(out) + text[position:]


def build_editor(cfg: EditConfig) -> Editor:
    if cfg.editor == "anthropic":
        return ClaudeEditor(cfg.anthropic)
    if cfg.editor == "hf":
        return HFEditor(cfg.hf)
    return RuleEditor(cfg.rule)
