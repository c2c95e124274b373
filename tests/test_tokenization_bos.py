"""BOS in prompts: LLaMA-style tokenizers that add BOS by default get it in front of every prompt (once);
tokenizers that add none (SmolLM2, the tiny model's) are unchanged; response ids never carry BOS."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaTokenizer

from fgrlhf.models import load_tokenizer
from fgrlhf.tokenization import default_bos_id, encode_example, encode_prompt, format_prompt

VOCAB = {"<s>": 0, "</s>": 1, "<unk>": 2, "hello": 3, "world": 4, "answer": 5, "now": 6}


def llama_tokenizer(add_bos: bool) -> LlamaTokenizer:
    """A tiny word-level LLaMA tokenizer built in memory (no download)."""
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return LlamaTokenizer(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        add_bos_token=add_bos,
        add_eos_token=False,
    )


def test_llama_style_tokenizer_gets_bos_in_prompts_not_responses():
    tok = llama_tokenizer(add_bos=True)
    assert default_bos_id(tok) == 0
    ex = encode_example(tok, "hello world", "answer now", max_prompt_tokens=16, max_response_tokens=16)
    assert ex.prompt_ids == [0, 3, 4]
    assert ex.response_ids == [5, 6, 1]  # no BOS, EOS last
    assert ex.input_ids == [0, 3, 4, 5, 6, 1]
    # A template that already writes BOS does not get a second one.
    assert encode_prompt(tok, "<s> hello world", 16) == [0, 3, 4]
    # Truncation keeps BOS and the end of the prompt (the generation cue).
    assert encode_prompt(tok, "hello world hello now", 3) == [0, 3, 6]
    assert encode_prompt(tok, "hello world", 1) == [4]


def test_tokenizers_without_default_bos_are_unchanged():
    tok = llama_tokenizer(add_bos=False)
    assert default_bos_id(tok) is None
    assert encode_prompt(tok, "hello world", 16) == [3, 4]
    tiny = load_tokenizer("tiny")  # SmolLM2's tokenizer: adds no special tokens
    assert default_bos_id(tiny) is None
    prompt = format_prompt(tiny, "Say hi.")
    assert encode_prompt(tiny, prompt, 512) == tiny(prompt, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("add_bos", [True, False])
def test_bos_detection_follows_the_tokenizers_own_default(add_bos):
    tok = llama_tokenizer(add_bos)
    assert (tok("hello")["input_ids"][0] == 0) is add_bos
    assert (default_bos_id(tok) == 0) is add_bos
