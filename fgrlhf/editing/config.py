"""Typed configuration of ``fgrlhf edit`` (YAML template: configs/edit-default.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fgrlhf.config import StrictModel

# Resolved against the package so the default works from any working directory (editable installs).
DEFAULT_RULES = str(Path(__file__).resolve().parents[2] / "configs" / "edit-rules-default.yaml")


class RetryConfig(StrictModel):
    """Our own retry policy (the SDK's retries are off), so every retry is counted by cause and tested."""

    max_attempts: int = Field(6, ge=1, description="attempts per item on transient errors (429/529/5xx/time-out)")
    malformed_attempts: int = Field(3, ge=1, description="attempts per item when replies lack the tags")
    initial_backoff_s: float = Field(1.0, ge=0.0)
    max_backoff_s: float = Field(60.0, ge=0.0)
    jitter: float = Field(0.5, ge=0.0, le=1.0, description="fraction of each backoff that is randomised")
    max_retry_after_s: float = Field(300.0, ge=0.0, description="cap on a server's retry-after")
    seed: int = 0


class AnthropicEditorConfig(StrictModel):
    """Claude through the Messages API; key and endpoint come from ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL."""

    # No sampling settings: current Claude models reject non-default temperature/top_p (HTTP 400).
    model: str = "claude-sonnet-5-5"
    max_tokens: int = Field(16384, ge=1, description="room for adaptive thinking plus the edited response")
    timeout_s: float = Field(300.0, gt=0.0, description="per request")
    input_usd_per_mtok: float = Field(2.0, ge=0.0)
    output_usd_per_mtok: float = Field(10.0, ge=0.0)


class HFEditorConfig(StrictModel):
    """A local causal LM (tiny / smollm2 / checkpoint path) prompted through its chat template."""

    model: str = "smollm2"
    max_new_tokens: int = Field(512, ge=1)
    do_sample: bool = False
    temperature: float = Field(0.7, gt=0.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = 0


class RuleEditorConfig(StrictModel):
    """Regex rewrite rules; ``recall`` is the deterministic fraction of matched faults that get fixed."""

    rules: str = DEFAULT_RULES
    recall: float = Field(1.0, ge=0.0, le=1.0)
    seed: int = 0


class EditConfig(StrictModel):
    editor: Literal["anthropic", "hf", "rule"] = "anthropic"
    concurrency: int = Field(8, ge=1, description="items in flight at once")
    cache: str | None = Field(None, description="SQLite cache; default: OUTPUT.cache.sqlite")
    tokenizer: str = Field("smollm2", description="tokenizer of the edit statistics (tiny/smollm2/path)")
    max_changed_fraction: float = Field(0.5, gt=0.0, le=1.0, description="larger edits are rejected")
    limit: int | None = Field(None, ge=1, description="edit only the first N valid records")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    anthropic: AnthropicEditorConfig = Field(default_factory=AnthropicEditorConfig)
    hf: HFEditorConfig = Field(default_factory=HFEditorConfig)
    rule: RuleEditorConfig = Field(default_factory=RuleEditorConfig)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> EditConfig:
        if self.retry.initial_backoff_s > self.retry.max_backoff_s:
            raise ValueError("retry.initial_backoff_s must not exceed retry.max_backoff_s")
        return self

    def set_model(self, name: str) -> None:
        """``--model``: the model of the chosen LLM editor."""
        if self.editor == "rule":
            raise ValueError("--model does not apply to the rule editor; choose its rules with --rules")
        getattr(self, self.editor).model = name
