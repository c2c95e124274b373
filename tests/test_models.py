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


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_attn_implementation_reaches_every_loader(tmp_path, impl):
    """``model.attn_implementation`` is the kernel of the tiny model, of a checkpoint loaded with
    ``from_pretrained`` and of a reward model (reward worker, critic), and both kernels compute the same."""
    from fgrlhf.reward.model import build_reward_model, load_reward_model

    tok = load_tokenizer("tiny")
    tiny = load_causal_lm(ModelConfig(attn_implementation=impl), tok)
    assert tiny.config._attn_implementation == impl
    tiny.save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    loaded = load_causal_lm(ModelConfig(name=str(tmp_path / "lm"), attn_implementation=impl))
    assert loaded.config._attn_implementation == impl
    build_reward_model("token", ModelConfig()).save_pretrained(tmp_path / "rm", tok)
    assert load_reward_model(tmp_path / "rm", attn_implementation=impl).config._attn_implementation == impl

    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, tok.pad_token_id, tok.pad_token_id]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    other = load_causal_lm(ModelConfig(attn_implementation="eager" if impl == "sdpa" else "sdpa"), tok)
    with torch.no_grad():
        a = tiny(input_ids=ids, attention_mask=mask).logits
        b = other(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(a[mask.bool()], b[mask.bool()], atol=1e-5)


def test_flash_attention_without_flash_attn_is_one_config_error(monkeypatch):
    import importlib.util

    from fgrlhf.config import ConfigError, load_config

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a)
    )
    with pytest.raises(ConfigError) as caught:
        load_config(ModelConfig, overrides=["attn_implementation=flash_attention_2"])
    message = str(caught.value)
    assert "attn_implementation" in message and "flash_attn package" in message
    assert "Traceback" not in message
