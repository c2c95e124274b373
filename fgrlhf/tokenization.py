"""Prompt formatting and prompt/response encoding shared by every trainer.

The response is tokenized on its own and appended to the prompt's ids (then EOS), so the response token
ids a token diff sees are exactly the ids the model reads: masks computed on them index the model input
without any re-alignment.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from transformers import PreTrainedTokenizerBase

# AlpacaFarm's template, the same as the packaged resources/data/alpaca_farm/prompt_template.json
# (tests/test_packaged_data.py checks they agree); load_alpaca_template() reads a custom one.
ALPACA_TEMPLATE = {
    "prompt_noinputs": (
        "Below is an instruction that describes a task. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{instruction}\n\n### Response:"
    ),
    "prompt_inputs": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:"
    ),
}


def load_alpaca_template(path: str | Path) -> dict[str, str]:
    template = json.loads(Path(path).read_text(encoding="utf-8"))
    for key in ("prompt_noinputs", "prompt_inputs"):
        if not isinstance(template.get(key), str):
            raise ValueError(f"{path}: field '{key}' must be a string template")
    return template


def format_prompt(
    tokenizer: PreTrainedTokenizerBase,
    instruction: str,
    prompt_format: Literal["chat", "alpaca"] = "chat",
    input_text: str = "",
    alpaca_template: dict[str, str] | None = None,
) -> str:
    """The text the policy continues: the tokenizer's chat template, or AlpacaFarm's template."""
    if prompt_format == "alpaca":
        template = alpaca_template or ALPACA_TEMPLATE
        if input_text:
            return template["prompt_inputs"].format(instruction=instruction, input=input_text)
        return template["prompt_noinputs"].format(instruction=instruction)
    content = f"{instruction}\n\n{input_text}" if input_text else instruction
    # tokenize=False returns the text; transformers types it as every form it can return.
    return cast(
        str,
        tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        ),
    )


def encode_response(tokenizer: PreTrainedTokenizerBase, response: str, max_tokens: int) -> list[int]:
    """Response ids followed by EOS, truncated to ``max_tokens`` (EOS kept only if it fits)."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return ids[:max_tokens]


@dataclass(frozen=True)
class EncodedExample:
    """Prompt and response ids; ``input_ids = prompt_ids + response_ids``."""

    prompt_ids: list[int]
    response_ids: list[int]

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.response_ids


def default_bos_id(tokenizer: PreTrainedTokenizerBase) -> int | None:
    """BOS id when the tokenizer puts one in front of a text by default (LLaMA-style ``add_bos_token``),
    else None (GPT-2/SmolLM2-style tokenizers add nothing)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos else None


def tokenize_prompt(tokenizer: PreTrainedTokenizerBase, prompt_text: str) -> list[int]:
    """Prompt ids as the model saw them in training: BOS first if the tokenizer adds one by default (once,
    also when a chat template already writes it). Only BOS: an EOS appended by the tokenizer would end the
    prompt, so special tokens are not added wholesale. Responses never get BOS (:func:`encode_response`)."""
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    bos = default_bos_id(tokenizer)
    return [bos, *ids] if bos is not None and ids[:1] != [bos] else ids


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt_text: str, max_tokens: int) -> list[int]:
    """Prompt ids, keeping the *end* of an over-long prompt (the generation cue must survive), and BOS."""
    ids = tokenize_prompt(tokenizer, prompt_text)
    if len(ids) <= max_tokens:
        return ids
    bos = default_bos_id(tokenizer)
    if bos is not None and max_tokens > 1:
        return [bos, *ids[len(ids) - max_tokens + 1 :]]
    return ids[-max_tokens:]


def encode_example(
    tokenizer: PreTrainedTokenizerBase,
    prompt_text: str,
    response: str,
    max_prompt_tokens: int,
    max_response_tokens: int,
) -> EncodedExample:
    return EncodedExample(
        encode_prompt(tokenizer, prompt_text, max_prompt_tokens),
        encode_response(tokenizer, response, max_response_tokens),
    )
