"""Reward models: a causal LM's base transformer plus a scalar head, read per token or once per sequence.

- :class:`TokenRewardModel` (2406.02756): r_t = head(h_t), the hidden state at the position of response
  token t itself (after reading a_t); R(τ) = (1/T) Σ_t r_t over the real response tokens, EOS included.
- :class:`SequenceRewardModel` (AlpacaFarm): one score, the head at the last real response token (EOS).

Both share one forward, ``model(input_ids, attention_mask) -> [B, L]``, the head at every position; the
kind only decides which positions are read (:meth:`RewardModel.sequence_scores`). Padding never leaks
in: inputs are right-padded, the attention mask is causal + padding, and readers mask to real tokens.

Saved as an HF-style directory (``save_pretrained``): ``model.safetensors`` (backbone weights under
``backbone.*`` and ``head.weight``/``head.bias``), ``config.json`` (the backbone's config plus an
``fgrlhf_reward`` section: kind, base model, prompt format, token limits) and the tokenizer, so
``fgrlhf.models.load_tokenizer(DIR)`` works on it.

For PPO: :func:`load_reward_model` loads either kind for scoring, and is also the critic's initialisation
(AlpacaFarm initialises the value model from the RM): the critic is the same module, with
:func:`per_position_scores` read as V at every position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.initialization import no_init_weights

from fgrlhf.algorithms.rm_losses import token_rm_sequence_reward
from fgrlhf.config import ModelConfig

WEIGHTS = "model.safetensors"
SECTION = "fgrlhf_reward"


class RewardModel(nn.Module):
    """Backbone (an HF base model such as ``LlamaModel``) + ``Linear(hidden, 1)`` over every position."""

    kind: ClassVar[str]

    def __init__(self, backbone: PreTrainedModel, info: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1, dtype=backbone.dtype)
        # Small init: the untrained RM scores ~0 everywhere, so early Eq. 3/4 margins start near 0.
        nn.init.normal_(self.head.weight, std=1.0 / (backbone.config.hidden_size + 1))
        nn.init.zeros_(self.head.bias)
        # Provenance written into config.json (base model, prompt format, token limits).
        self.info = dict(info or {})

    @property
    def config(self):
        return self.backbone.config

    def gradient_checkpointing_enable(self, **kwargs) -> None:
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Head output at every position, ``[B, L]`` (meaningless on padding: callers mask). Packed rows
        (:func:`fgrlhf.workers.packing.pack_row`) give ``position_ids`` and no ``attention_mask``; no KV cache, so
        transformers builds their block-diagonal mask."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state
        return self.head(hidden).squeeze(-1)

    # --- reading scores ---------------------------------------------------------------------------------
    def sequence_scores(self, token_scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """One score per response from the head read at its tokens (``[B, T]``, response layout)."""
        raise NotImplementedError

    @torch.no_grad()
    def score(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, micro_batch_size: int = 8
    ) -> dict[str, torch.Tensor]:
        """Score responses (each ending in EOS): ``token`` ``[B, T]`` (head at each response token, 0 on
        padding; a token RM's r_t), ``response_mask`` ``[B, T]`` and ``sequence`` ``[B]``."""
        from fgrlhf.workers.packing import at_response, pack

        device = next(self.parameters()).device
        width = max(len(r) for r in response_ids)
        token = torch.zeros(len(prompt_ids), width)
        mask = torch.zeros(len(prompt_ids), width)
        sequence = torch.zeros(len(prompt_ids))
        for start in range(0, len(prompt_ids), micro_batch_size):
            rows = slice(start, start + micro_batch_size)
            batch = pack(prompt_ids[rows], response_ids[rows], pad_id).to(device)
            per_token = at_response(self(batch.input_ids, batch.attention_mask), batch.response_index).float()
            per_token = per_token * batch.response_mask
            token[rows, : per_token.size(1)] = per_token.cpu()
            mask[rows, : per_token.size(1)] = batch.response_mask.cpu()
            sequence[rows] = self.sequence_scores(per_token, batch.response_mask).cpu()
        return {"token": token, "response_mask": mask, "sequence": sequence}

    # --- persistence ------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, tokenizer: PreTrainedTokenizerBase | None = None) -> None:
        """Write weights (safetensors), config.json with the ``fgrlhf_reward`` section, and the tokenizer."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Copies: under ZeRO-3 DeepSpeed may keep small (persistent) parameters as views of one flat buffer,
        # which safetensors refuses as shared storage.
        save_file(
            {name: tensor.detach().cpu().contiguous().clone() for name, tensor in self.state_dict().items()},
            str(directory / WEIGHTS),
            metadata={"format": "pt"},
        )
        config = self.backbone.config.to_dict()
        config["architectures"] = [type(self.backbone).__name__]
        config[SECTION] = {"kind": self.kind, **self.info}
        (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None) -> RewardModel:
        """Load a directory written by :meth:`save_pretrained` (of this class's kind)."""
        model = load_reward_model(directory, dtype)
        if not isinstance(model, cls):
            raise ValueError(f"{directory} holds a {model.kind} reward model, not a {cls.kind} one")
        return model


class TokenRewardModel(RewardModel):
    kind = "token"

    def sequence_scores(self, token_scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        return token_rm_sequence_reward(token_scores, response_mask)


class SequenceRewardModel(RewardModel):
    kind = "sequence"

    def sequence_scores(self, token_scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        last = (response_mask.sum(-1).long() - 1).clamp(min=0)  # the EOS (last real token) of each row
        return token_scores.gather(-1, last.unsqueeze(-1)).squeeze(-1)


KINDS: dict[str, type[RewardModel]] = {"token": TokenRewardModel, "sequence": SequenceRewardModel}


def build_reward_model(kind: str, model_cfg: ModelConfig, info: dict[str, Any] | None = None) -> RewardModel:
    """A fresh RM of ``kind`` on the base transformer of the causal LM ``model_cfg`` names (LM head dropped)."""
    from fgrlhf.models import load_causal_lm

    if kind not in KINDS:
        raise ValueError(f"reward-model kind must be one of {sorted(KINDS)}, got {kind!r}")
    backbone = load_causal_lm(model_cfg).base_model
    assert isinstance(backbone, PreTrainedModel)  # transformers types base_model as a plain Module
    return KINDS[kind](
        backbone, {"base_model": model_cfg.name, "prompt_format": model_cfg.prompt_format, **(info or {})}
    )


def read_reward_info(directory: str | Path) -> dict[str, Any]:
    """The ``fgrlhf_reward`` section of an RM directory's config.json (kind, base model, prompt format...)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{directory}: not a reward-model directory (no config.json)")
    section = json.loads(path.read_text(encoding="utf-8")).get(SECTION)
    if not isinstance(section, dict) or section.get("kind") not in KINDS:
        raise ValueError(f"{path}: no '{SECTION}' section with kind token|sequence; not an fgrlhf reward model")
    return section


def load_reward_model(
    directory: str | Path, dtype: torch.dtype | None = None, attn_implementation: str | None = None
) -> RewardModel:
    """Load a saved RM of either kind, in its saved dtype unless ``dtype`` is given, with transformers' default
    attention unless ``attn_implementation`` (``ModelConfig.attn_implementation``) names one.

    Also PPO's critic initialisation: the returned module's :func:`per_position_scores` are the values,
    so the critic starts as the RM (AlpacaFarm). Inside :func:`fgrlhf.runtime.distributed.zero3_init` at ZeRO-3
    (every rank of the learner group calling this) it is built partitioned and loaded one parameter at a
    time, so no rank holds it whole."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    from fgrlhf.runtime.distributed import load_partitioned, partitioned_construction, zero3_loading

    directory = Path(directory)
    info = read_reward_info(directory)
    raw = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    raw.pop(SECTION)
    config = AutoConfig.for_model(**raw)
    if dtype is None:  # keep the saved precision (the head's dtype is the backbone's)
        with safe_open(str(directory / WEIGHTS), framework="pt") as weights:
            dtype = weights.get_tensor("head.weight").dtype
    zero3 = zero3_loading()
    # Either way no throw-away random init: every weight comes from the file.
    with partitioned_construction(zero3) if zero3 is not None else no_init_weights():
        backbone = AutoModel.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
        model = KINDS[info["kind"]](backbone, {k: v for k, v in info.items() if k != "kind"})
    if zero3 is not None:
        load_partitioned(model, [directory / WEIGHTS])
    else:
        load_model(model, str(directory / WEIGHTS), strict=True)
    return model


def per_position_scores(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Head output at every position ``[B, L]`` of an RM module or its DeepSpeed engine (a critic's values)."""
    return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
