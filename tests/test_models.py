import pytest
import torch

from fgrlhf.config import ModelConfig
from fgrlhf.models import ModelLoadError, load_causal_lm, load_tokenizer
from fgrlhf.tokenization import encode_example, format_prompt


def test_tiny_model_is_deterministic_and_shares_smollm2_tokenizer():
    tok = load_tokenizer("tiny")
    a = load_causal_lm(ModelConfig(seed=1), tok)
    b = load_causal_lm(ModelConfig(seed=1), tok)
    c = load_causal_lm(ModelConfig(seed=2), tok)
    assert a.config.vocab_size == len(tok) and a.config.head_dim >= 32
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.embed_tokens.weight, c.model.embed_tokens.weight)
    assert tok.pad_token is not None and tok.eos_token == "<|im_end|>"


def test_prompt_formats_and_response_encoding_end_with_eos():
    tok = load_tokenizer("tiny")
    chat = format_prompt(tok, "Name a colour.")
    assert chat.startswith("<|im_start|>") and chat.endswith("<|im_start|>assistant\n")
    alpaca = format_prompt(tok, "Name a colour.", "alpaca")
    assert alpaca.endswith("### Instruction:\nName a colour.\n\n### Response:")
    ex = encode_example(tok, chat, "Blue.", max_prompt_tokens=512, max_response_tokens=8)
    assert ex.response_ids[-1] == tok.eos_token_id
    assert tok.decode(ex.response_ids[:-1]) == "Blue."
    assert ex.input_ids == ex.prompt_ids + ex.response_ids
    # An over-long prompt keeps its end (the generation cue), an over-long response its start.
    short = encode_example(tok, chat, "one two three four five six", max_prompt_tokens=3, max_response_tokens=2)
    assert short.prompt_ids == ex.prompt_ids[-3:] and len(short.response_ids) == 2


def test_embedded_smollm2_loads_from_cached_safetensors_checkpoint():
    from fgrlhf.models import smollm2_checkpoint

    path = smollm2_checkpoint()
    assert (path / "model.safetensors").is_file()
    model = load_causal_lm(ModelConfig(name="smollm2"))
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not 'tiny', 'smollm2' or a directory"):
        load_tokenizer(str(tmp_path / "nowhere"))
