"""Typed configuration: pydantic models loaded from YAML and overridden by dotted ``key=value`` arguments.

Every section forbids unknown keys, so a typo is an error naming the key instead of a silently ignored
setting. Command configs (edit, train-rm, ppo, figa, ...) live next to the code that uses them and are
built from the shared sections defined here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

T = TypeVar("T", bound="StrictModel")


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the file and the key."""


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictModel):
    """Which causal LM to load: ``tiny`` (random init, tests), ``smollm2`` (embedded default) or a path."""

    name: str = "tiny"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    prompt_format: Literal["chat", "alpaca"] = "chat"
    # Only used when name == "tiny": the random-init Llama's shape (head_dim >= 32 keeps vLLM happy).
    tiny_hidden_size: int = Field(64, ge=8)
    tiny_layers: int = Field(2, ge=1)
    tiny_heads: int = Field(2, ge=1)
    tiny_intermediate_size: int = Field(128, ge=8)
    seed: int = 0
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="transformers' attention kernel for every HF-loaded role (policy, reference, reward, critic, "
        "RM and FIGA training); flash_attention_2 needs the flash_attn package (GPU). The vLLM engine ignores it",
    )
    autocast: Literal["none", "bf16"] = Field(
        "none",
        description="bf16: forwards (and the learners' backwards) under torch.autocast(bfloat16) over float32 "
        "master weights, in the HF rollout engine, the reference, the reward model and the PPO learners "
        "(DeepSpeed's torch_autocast); none: plain dtype arithmetic. docs/precision.md has the measured trade-off",
    )

    @field_validator("attn_implementation")
    @classmethod
    def _attention_installed(cls, value: str) -> str:
        import importlib.util

        if value == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ValueError("flash_attention_2 needs the flash_attn package, which is not installed; use sdpa")
        return value

    @model_validator(mode="after")
    def _autocast_over_fp32(self) -> ModelConfig:
        if self.autocast == "bf16" and self.dtype != "float32":
            raise ValueError(f"autocast=bf16 keeps float32 master weights: set dtype=float32 (not {self.dtype})")
        return self


class DeepSpeedConfig(StrictModel):
    """The learner side: DeepSpeed engine settings shared by the RM, FIGA and PPO trainers."""

    zero_stage: int = Field(0, ge=0, le=3)
    world_size: int = Field(1, ge=1, description="data-parallel ranks, one Ray actor each")
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    num_gpus_per_rank: float = Field(0.0, ge=0.0)
    num_cpus_per_rank: float = Field(1.0, gt=0.0)
    micro_batch_size: int = Field(4, ge=1, description="per rank, per forward/backward")
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float = Field(1.0, ge=0.0)
    bf16: bool = False
    grad_accum_dtype: Literal["fp32", "bf16"] | None = Field(
        None,
        description="gradient accumulation dtype (DeepSpeed data_types.grad_accum_dtype). Unset: fp32 for a "
        "bf16 model at ZeRO >= 1 (many bf16 micro-steps would round small gradients away; DeepSpeed's own "
        "default is the model's dtype), else the model's dtype (DeepSpeed has no bf16/fp32 mix at stage 0)",
    )
    gradient_checkpointing: bool = False
    packing: Literal["auto", "padded", "grouped", "packed"] = Field(
        "auto",
        description="micro-batch layout (fgrlhf.workers.packing): padded = rows in batch order, right-padded; "
        "grouped = rows sorted by length, then padded; packed = a micro-batch's sequences in one row, position "
        "ids restarting per sequence; auto = packed on CUDA with flash_attention_2, else grouped (measured "
        "fastest on CPU)",
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        ge=1,
        description="token budget of one micro-batch (padded rows x longest, or packed tokens), rows sorted by "
        "length; unset: micro_batch_size rows. Each micro-batch's loss is weighted by its share of the "
        "minibatch's response tokens, so the step equals one big batch's",
    )
    balance_ranks: bool = Field(
        True,
        description="PPO: reorder each batch so that every data-parallel rank's contiguous shard holds about "
        "as many tokens (per-row results are put back in batch order)",
    )
    timeout_s: float = Field(
        1800.0,
        gt=0.0,
        description="the learner group's process-group timeout: rendezvous and every collective (DeepSpeed's "
        "default is 10 min, DEEPSPEED_TIMEOUT); a rank stuck longer fails instead of hanging",
    )

    @model_validator(mode="after")
    def _check_grad_accum_dtype(self) -> DeepSpeedConfig:
        # DeepSpeed accumulates bf16 gradients in fp32 only in its ZeRO optimizers (stage >= 1); at stage 0 it
        # raises NotImplementedError for the mix, so say so here, before any rank starts.
        if self.grad_accum_dtype == "bf16" and not self.bf16:
            raise ValueError("grad_accum_dtype=bf16 needs bf16=true")
        if self.grad_accum_dtype == "fp32" and self.bf16 and self.zero_stage == 0:
            raise ValueError(
                "grad_accum_dtype=fp32 with bf16=true needs zero_stage >= 1 (DeepSpeed's ZeRO "
                "optimizers accumulate in fp32; stage 0 does not support the mix)"
            )
        if self.grad_accum_dtype is None and self.bf16 and self.zero_stage >= 1:
            # Written past validate_assignment (it would re-enter this validator); the value is valid here.
            self.__dict__["grad_accum_dtype"] = "fp32"
        return self

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation_steps * self.world_size


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into ``{"a": {"b": 1}, "c": "x"}``; values are parsed as YAML scalars."""
    tree: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. ppo.kl_coef=0.02")
        try:
            value = yaml.safe_load(raw) if raw else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part!r} is already set to a scalar")
            node = child
        node[leaf] = value
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(exc: ValidationError, source: str) -> str:
    """One line per error naming the dotted key, never pydantic's dump of the input."""
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'")
            continue
        message = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        if isinstance(got, (dict, list)):
            # A check across keys (a section's validator): its message names the keys, and its input is the
            # whole section (for the top level, the whole config), so it is not shown.
            lines.append(f"  {key}: {message}" if key else f"  {message}")
        else:
            shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
            lines.append(f"  key '{key}': {message} (got {shown})")
    return "\n".join(lines)


_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(value: Any, source: str, key: str = "") -> Any:
    """``${NAME}`` / ``${NAME:-default}`` in the file's string values, from the environment (so one variable
    can hold the paths every config of a cluster shares); an unset ``${NAME}`` is an error naming the key."""
    if isinstance(value, dict):
        return {k: _expand_env(v, source, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def lookup(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"config {source}: key '{key}': environment variable {name} is not set")
        return default

    return _ENV_REF.sub(lookup, value)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from an optional YAML file (``${ENV}`` references expanded) plus dotted overrides; errors
    name file and key."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        path = Path(path)
        source = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8-sig"))  # a UTF-8 BOM is allowed
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except IsADirectoryError:
            raise ConfigError(f"config {path}: is a directory, expected a YAML file") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(loaded).__name__}")
        data = _expand_env(loaded or {}, source)
    if overrides:
        data = _merge(data, parse_overrides(overrides))
        source += " + command-line overrides"
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def dump_config(cfg: StrictModel, path: str | Path) -> None:
    """Write the resolved config next to a run's outputs (no secrets live in configs)."""
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
