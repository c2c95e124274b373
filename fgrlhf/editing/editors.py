"""Minimal editors behind one interface: Claude (Messages API), a local HF model, and regex rules.

An editor turns (instruction, response) into the edited response or raises one of the classified errors
of :mod:`fgrlhf.editing.retry`; it never retries itself (the pipeline's retry policy does).
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import re
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import ValidationError

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
        self._client = anthropic.AsyncAnthropic(max_retries=0, timeout=cfg.timeout_s)

    def fingerprint(self) -> str:
        return f"{PROMPT_VERSION}|max_tokens={self.cfg.max_tokens}"

    async def edit(self, instruction: str, text: str) -> EditReply:
        reply, usage = await create_message(
            self._client, model=self.cfg.model, max_tokens=self.cfg.max_tokens, system=SYSTEM_PROMPT,
            messages=[{"role": "user", "content": user_message(instruction, text)}])
        edited = parse_reply(reply)
        if edited is None:
            raise MalformedReply(usage)
        return EditReply(edited, usage)

    async def aclose(self) -> None:
        await self._client.close()


async def create_message(client, **request) -> tuple[str, Usage]:
    """``client.messages.create(**request)`` -> (reply text, usage), with SDK errors classified into the
    exceptions of :mod:`fgrlhf.editing.retry` (shared by the Claude editor and the Claude judge)."""
    import anthropic as sdk

    try:
        message = await client.messages.create(**request)
    except sdk.APITimeoutError:
        raise TransientError("timeout") from None
    except sdk.APIConnectionError as exc:
        raise TransientError("connection", detail=type(exc).__name__) from None
    except (sdk.AuthenticationError, sdk.PermissionDeniedError) as exc:
        raise FatalError(f"HTTP {exc.status_code} {exc.type or ''}: check ANTHROPIC_API_KEY") from None
    except sdk.APIStatusError as exc:
        raise _classify_status(exc) from None
    usage = Usage(message.usage.input_tokens, message.usage.output_tokens)
    return "".join(block.text for block in message.content if block.type == "text"), usage


def _classify_status(exc) -> Exception:
    """Map an HTTP error of the Messages API to transient (retry) or permanent (fail the item)."""
    status = exc.status_code
    headers = exc.response.headers
    retry_after = parse_retry_after(headers)
    should_retry = headers.get("x-should-retry")  # the API's own hint overrides the status code
    causes = {429: "rate_limit", 529: "overloaded", 408: "timeout", 409: "conflict"}
    if should_retry == "true" or (should_retry != "false" and (status in causes or status >= 500)):
        return TransientError(causes.get(status, "server_error"), retry_after, detail=f"HTTP {status}")
    return PermanentError(f"HTTP {status} {exc.type or ''}".rstrip())


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
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_message(instruction, text)},
        ]
        prompt = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = self._tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        sampling = (
            {"do_sample": True, "temperature": self.cfg.temperature, "top_p": self.cfg.top_p}
            if self.cfg.do_sample
            else {"do_sample": False}
        )
        with self._lock, self._torch.no_grad():
            if self.cfg.do_sample:  # reproducible per item, whatever order items arrive in
                self._torch.manual_seed(_stable_int(f"{self.cfg.seed}|{instruction}|{text}"))
            out = self._lm.generate(**ids, max_new_tokens=self.cfg.max_new_tokens, **sampling)
        new = out[0, ids["input_ids"].shape[1]:]
        reply = self._tokenizer.decode(new, skip_special_tokens=True)
        return reply, Usage(int(ids["input_ids"].shape[1]), int(new.shape[0]))

    async def edit(self, instruction: str, text: str) -> EditReply:
        reply, usage = await asyncio.to_thread(self._generate, instruction, text)
        edited = parse_reply(reply)
        if edited is None:
            raise MalformedReply(usage)
        return EditReply(edited, usage)


class Rule(StrictModel):
    name: str
    pattern: str
    replacement: str


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def load_rules(path: str | Path) -> list[tuple[Rule, re.Pattern]]:
    """A YAML list of {name, pattern, replacement}; errors name the file, the rule and the field."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"rules file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, list) or not data:
        raise ConfigError(f"{path}: expected a non-empty list of rules {{name, pattern, replacement}}")
    rules = []
    for index, raw in enumerate(data):
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            fields = ", ".join(f"{'.'.join(map(str, e['loc'])) or '<rule>'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"{path}: rule {index}: {fields}") from None
        try:
            compiled = re.compile(rule.pattern)
            _check_replacement(compiled, rule.replacement)
        except re.error as exc:
            raise ConfigError(f"{path}: rule {index} ({rule.name}): bad regex: {exc}") from None
        rules.append((rule, compiled))
    return rules


def _check_replacement(pattern: re.Pattern, replacement: str) -> None:
    """Raise re.error now for a bad group reference that would otherwise fail at the first match."""
    names = {index: name for name, index in pattern.groupindex.items()}
    groups = "".join(f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, pattern.groups + 1))
    re.compile(groups).sub(replacement, "")  # an empty pattern with the same groups always matches


class RuleEditor(Editor):
    """Deterministic regex rewrites that fix a ``recall`` fraction of the matched faults.

    Whether one match is fixed depends only on (seed, rule name, match ordinal, input text), so a run is
    reproducible and independent of order and concurrency: a simulated annotator who misses some faults.
    """

    name = "rule"
    deterministic = True

    def __init__(self, cfg: RuleEditorConfig):
        self.cfg = cfg
        self.model = Path(cfg.rules).name
        self.rules = load_rules(cfg.rules)
        rules_json = json.dumps([rule.model_dump() for rule, _ in self.rules], sort_keys=True)
        self._rules_hash = hashlib.sha256(rules_json.encode("utf-8")).hexdigest()[:16]

    def fingerprint(self) -> str:
        return f"rules={self._rules_hash}|recall={self.cfg.recall}|seed={self.cfg.seed}"

    def _fixes(self, text: str, rule_name: str, ordinal: int) -> bool:
        draw = _stable_int(f"{self.cfg.seed}\0{rule_name}\0{ordinal}\0{text}") / 2**64
        return draw < self.cfg.recall

    def apply(self, text: str) -> str:
        edited = text
        for rule, pattern in self.rules:
            ordinal = itertools.count()

            def replace(match: re.Match, rule: Rule = rule) -> str:
                fixed = self._fixes(text, rule.name, next(ordinal))
                return match.expand(rule.replacement) if fixed else match.group(0)

            edited = pattern.sub(replace, edited)
        return edited

    async def edit(self, instruction: str, text: str) -> EditReply:
        return EditReply(self.apply(text), Usage())


def build_editor(cfg: EditConfig) -> Editor:
    if cfg.editor == "anthropic":
        return ClaudeEditor(cfg.anthropic)
    if cfg.editor == "hf":
        return HFEditor(cfg.hf)
    return RuleEditor(cfg.rule)
