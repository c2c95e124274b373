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
    max_initial_connect_failures: int = Field(
        16,
        ge=0,
        description="stop the run when this many requests fail to connect before any connects "
        "(a wrong ANTHROPIC_BASE_URL or no network); 0 = never",
    )
    seed: int = 0


class AnthropicEditorConfig(StrictModel):
    """Claude through the Messages API; key and endpoint come from ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL."""

    # No sampling settings: current Claude models reject non-default temperature/top_p (HTTP 400).
    model: str = "claude-sonnet-5-5"
    max_tokens: int = Field(16384, ge=1, description="room for adaptive thinking plus the edited response")
    timeout_s: float = Field(300.0, gt=0.0, description="per request")
    input_usd_per_mtok: float = Field(2.0, ge=0.0)
    output_usd_per_mtok: float = Field(10.0, ge=0.0)


class BatchConfig(StrictModel):
    """The Message Batches API (``--batch``, Claude only): half the price, no rate limits, results within 24 h.

    Items that come back errored (except invalid requests), expired or malformed are resubmitted in a new
    batch, up to ``retry.max_attempts`` / ``retry.malformed_attempts`` batches per item in one run.
    """

    enabled: bool = Field(False, description="edit through Message Batches (the --batch flag)")
    chunk_size: int = Field(10_000, ge=1, le=100_000, description="requests per batch (the API allows 100,000)")
    max_batch_bytes: int = Field(
        256_000_000, ge=1, le=256_000_000, description="JSON size of a batch's requests (the API allows 256 MB)"
    )
    poll_interval_s: float = Field(60.0, gt=0.0, description="seconds between status checks of open batches")
    price_factor: float = Field(0.5, ge=0.0, description="batch price / list price, for the cost estimate")


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
    batch: BatchConfig = Field(default_factory=BatchConfig)
    hf: HFEditorConfig = Field(default_factory=HFEditorConfig)
    rule: RuleEditorConfig = Field(default_factory=RuleEditorConfig)

    @model_validator(mode="after")
    def _backoff_bounds(self) -> EditConfig:
        if self.retry.initial_backoff_s > self.retry.max_backoff_s:
            raise ValueError("retry.initial_backoff_s must not exceed retry.max_backoff_s")
        if self.batch.enabled and self.editor != "anthropic":
            raise ValueError(
                f"batch.enabled (--batch) needs editor=anthropic, not {self.editor}: only Claude has a batch API"
            )
        return self

    def set_model(self, name: str) -> None:
        """``--model``: the model of the chosen LLM editor."""
        if self.editor == "rule":
            raise ValueError("--model does not apply to the rule editor; choose its rules with --rules")
        getattr(self, self.editor).model = name
