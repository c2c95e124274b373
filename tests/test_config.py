from typing import Literal

import pytest
from pydantic import Field

from fgrlhf.config import ConfigError, DeepSpeedConfig, ModelConfig, StrictModel, load_config, parse_overrides


class Inner(StrictModel):
    kl_coef: float = Field(0.1, ge=0)
    estimator: Literal["k1", "k2", "k3"] = "k1"


class Outer(StrictModel):
    name: str = "run"
    steps: int = 3
    inner: Inner = Inner()
    model: ModelConfig = ModelConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()


def test_defaults_yaml_and_overrides_merge(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("steps: 5\ninner:\n  estimator: k3\nmodel:\n  name: smollm2\n")
    cfg = load_config(Outer, path, ["inner.kl_coef=0.02", "deepspeed.zero_stage=3", "name=x"])
    assert (cfg.steps, cfg.inner.estimator, cfg.inner.kl_coef) == (5, "k3", 0.02)
    assert (cfg.model.name, cfg.deepspeed.zero_stage, cfg.name) == ("smollm2", 3, "x")


def test_override_values_are_parsed_as_yaml_scalars():
    assert parse_overrides(["a.b=1", "a.c=0.5", "d=true", "e=hello", "f="]) == {
        "a": {"b": 1, "c": 0.5},
        "d": True,
        "e": "hello",
        "f": "",
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "a..b=1"])
def test_malformed_override_is_an_error(bad):
    with pytest.raises(ConfigError, match="override"):
        parse_overrides([bad])


def test_unknown_key_names_the_key_and_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  kl_cof: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(Outer, path)
    assert "unknown key 'inner.kl_cof'" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    "override, key",
    [
        ("inner.kl_coef=-1", "inner.kl_coef"),
        ("inner.estimator=k9", "inner.estimator"),
        ("steps=many", "steps"),
        ("deepspeed.zero_stage=4", "deepspeed.zero_stage"),
    ],
)
def test_bad_value_names_the_key(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(Outer, None, [override])


def test_missing_file_and_non_mapping_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "nope.yaml")
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, path)


def test_global_batch_size():
    cfg = DeepSpeedConfig(micro_batch_size=4, gradient_accumulation_steps=2, world_size=2)
    assert cfg.global_batch_size == 16
