"""Checkpoints as users have them (issue 20, item 4): torch ``.bin`` files, single or sharded, carrying tensors
the model computes itself (a 2023 LLaMA export's per-layer ``rotary_emb.inv_freq``), load under ZeRO-3 as
under ZeRO-0; tensors ``from_pretrained`` ignores are ignored and logged, real mismatches refused."""

import json
import logging

import pytest
import torch

from fgrlhf.config import ModelConfig


def _tiny_state() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    from fgrlhf.models import load_causal_lm

    model = load_causal_lm(ModelConfig(name="tiny", seed=3))
    return model, {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _inv_freq(model) -> dict[str, torch.Tensor]:
    """What a 2023 export saved besides the weights: one inv_freq buffer per attention layer."""
    inv_freq = model.model.rotary_emb.inv_freq
    return {f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq.clone() for i in range(len(model.model.layers))}


def write_bin_checkpoint(directory, state: dict[str, torch.Tensor], config, shards: int = 1) -> None:
    """An HF checkpoint in torch's ``.bin`` format: ``pytorch_model.bin``, or shards and their index."""
    directory.mkdir(parents=True)
    config.save_pretrained(directory)
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return
    names = list(state)
    weight_map = {}
    for shard in range(shards):
        file = f"pytorch_model-{shard + 1:05d}-of-{shards:05d}.bin"
        part = {name: state[name] for name in names[shard::shards]}
        torch.save(part, directory / file)
        weight_map.update(dict.fromkeys(part, file))
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def bin_checkpoints(tmp_path_factory):
    """The tiny model as a single and as a 3-shard ``.bin`` checkpoint, both with per-layer inv_freq, and
    the weights they hold. The tied lm_head is saved once, as the embedding (as save_pretrained does)."""
    model, state = _tiny_state()
    state.pop("lm_head.weight")
    saved = {**state, **_inv_freq(model)}
    root = tmp_path_factory.mktemp("bin-ckpt")
    write_bin_checkpoint(root / "single", saved, model.config)
    write_bin_checkpoint(root / "sharded", saved, model.config, shards=3)
    return {"single": root / "single", "sharded": root / "sharded", "weights": state}


def test_checkpoint_files_follow_from_pretrained(bin_checkpoints, tmp_path):
    from fgrlhf.models import ModelLoadError, checkpoint_files

    assert checkpoint_files(bin_checkpoints["single"]) == [bin_checkpoints["single"] / "pytorch_model.bin"]
    assert [p.name for p in checkpoint_files(bin_checkpoints["sharded"])] == [
        f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)
    ]
    with pytest.raises(ModelLoadError, match=r"no weights \(model.safetensors, pytorch_model.bin"):
        checkpoint_files(tmp_path)
    (tmp_path / "pytorch_model.bin.index.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="not a checkpoint index"):
        checkpoint_files(tmp_path)


def test_the_keys_from_pretrained_ignores_are_ignored_and_no_others():
    from fgrlhf.runtime.distributed import ignored_checkpoint_keys

    model, state = _tiny_state()
    extra = list(_inv_freq(model))
    bogus = ["model.layers.0.mlp.extra_proj.weight", "score.weight"]
    assert ignored_checkpoint_keys(model, [*state, *extra, *bogus]) == sorted(extra)

    class WithPattern(torch.nn.Module):  # a transformers class's own patterns are honoured, wherever it sits
        _keys_to_ignore_on_load_unexpected = (r"^score\.",)

    model.add_module("pattern_holder", WithPattern())
    assert ignored_checkpoint_keys(model, [*state, *extra, *bogus]) == sorted([*extra, "score.weight"])


def test_a_real_mismatch_is_refused_naming_the_keys(bin_checkpoints, tmp_path):
    """Refused before any rank reads a tensor (so this needs no process group): an unknown tensor, a missing
    one, a wrong shape."""
    from fgrlhf.runtime.distributed import load_partitioned

    model, state = _tiny_state()
    state.pop("lm_head.weight")
    cases = {
        "unexpected": ({**state, "model.layers.0.mlp.extra_proj.weight": torch.zeros(2)}, "extra_proj"),
        "missing": ({k: v for k, v in state.items() if k != "model.norm.weight"}, r"missing \['model.norm.weight'\]"),
        "shape": ({**state, "model.norm.weight": torch.zeros(3)}, "model.norm.weight has shape"),
    }
    for case, (weights, message) in cases.items():
        write_bin_checkpoint(tmp_path / case, {**weights, **_inv_freq(model)}, model.config)
        with pytest.raises(ValueError, match=message):
            load_partitioned(model, [tmp_path / case / "pytorch_model.bin"])


def test_a_legacy_format_bin_is_refused_clearly(tmp_path):
    from fgrlhf.runtime.distributed import load_partitioned

    model, state = _tiny_state()
    torch.save(state, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match=r"legacy .* format"):
        load_partitioned(model, [tmp_path / "pytorch_model.bin"])


@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_zero0_loads_bin_checkpoints(bin_checkpoints, layout):
    from fgrlhf.models import load_causal_lm

    loaded = load_causal_lm(ModelConfig(name=str(bin_checkpoints[layout]))).state_dict()
    for name, tensor in bin_checkpoints["weights"].items():
        assert torch.equal(loaded[name], tensor), name


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["single", "sharded"])
def test_zero3_loads_bin_checkpoints_with_inv_freq(ray_session, bin_checkpoints, layout):
    """Partitioned, the model holds exactly the file's weights; the inv_freq tensors are logged as ignored."""
    ray = ray_session

    @ray.remote(num_cpus=0.5, max_calls=1)  # its own process, gone afterwards (it joins a process group)
    def load_under_zero3(path: str):
        from fgrlhf.config import DeepSpeedConfig
        from fgrlhf.models import load_causal_lm
        from fgrlhf.runtime.distributed import free_port, init_rank, iter_full_state, leave_group, zero3_init

        messages: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: messages.append(record.getMessage())
        logging.getLogger("fgrlhf.runtime.distributed").addHandler(handler)
        logging.getLogger("fgrlhf.runtime.distributed").setLevel(logging.INFO)
        init_rank(0, 1, "127.0.0.1", free_port(), "gloo")
        try:
            with zero3_init(DeepSpeedConfig(zero_stage=3), tiny_model=True):
                model = load_causal_lm(ModelConfig(name=path))
            partitioned = all(p.data.numel() == 0 for p in model.parameters())
            state = {name: tensor.clone() for name, tensor in iter_full_state(model, 3)}
        finally:
            leave_group()
        return partitioned, state, messages

    partitioned, state, messages = ray.get(load_under_zero3.remote(str(bin_checkpoints[layout])))
    assert partitioned
    for name, tensor in bin_checkpoints["weights"].items():
        assert torch.equal(state[name], tensor), name
    (logged,) = [m for m in messages if "not loaded" in m]
    assert logged.count("rotary_emb.inv_freq") == 2  # both layers' (tiny has 2), named
