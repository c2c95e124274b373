"""The DeepSpeed config fgrlhf builds, as DeepSpeed itself parses it: ZeRO-3 parameter persistence and the
gradient-accumulation dtype."""

import pytest

from fgrlhf.config import ConfigError, DeepSpeedConfig, load_config
from fgrlhf.runtime.distributed import deepspeed_config


def parsed(cfg: DeepSpeedConfig, tiny_model: bool = False):
    from deepspeed.runtime.config import DeepSpeedConfig as Parsed

    return Parsed(deepspeed_config(cfg, tiny_model=tiny_model))


def test_zero3_keeps_deepspeeds_persistence_threshold_for_real_models():
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    built = deepspeed_config(DeepSpeedConfig(zero_stage=3))
    assert "stage3_param_persistence_threshold" not in built["zero_optimization"]
    default = DeepSpeedZeroConfig().param_persistence_threshold
    assert default > 0  # small parameters (norms) stay whole instead of being gathered on every pass
    assert parsed(DeepSpeedConfig(zero_stage=3)).zero_config.param_persistence_threshold == default


def test_tiny_test_models_partition_every_parameter():
    # All of tiny's parameters are below the default threshold; 0 makes tests gather them like a real model's.
    assert parsed(DeepSpeedConfig(zero_stage=3), tiny_model=True).zero_config.param_persistence_threshold == 0
    assert (
        "stage3_param_persistence_threshold"
        not in deepspeed_config(DeepSpeedConfig(zero_stage=2), tiny_model=True)["zero_optimization"]
    )


def test_grad_accum_dtype_reaches_deepspeeds_data_types():
    cfg = DeepSpeedConfig(zero_stage=3, bf16=True, grad_accum_dtype="fp32", gradient_accumulation_steps=16)
    assert deepspeed_config(cfg)["data_types"] == {"grad_accum_dtype": "fp32"}
    assert parsed(cfg).grad_accum_dtype == "fp32"
    # Unset: no data_types section, DeepSpeed accumulates in the model's dtype.
    assert "data_types" not in deepspeed_config(DeepSpeedConfig(bf16=True, zero_stage=3))
    assert parsed(DeepSpeedConfig(bf16=True, zero_stage=3)).grad_accum_dtype is None


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["bf16=true", "zero_stage=0", "grad_accum_dtype=fp32"], "needs zero_stage >= 1"),
        (["grad_accum_dtype=bf16"], "needs bf16=true"),
        (["grad_accum_dtype=fp16"], "grad_accum_dtype"),
    ],
)
def test_unsupported_grad_accum_dtype_is_a_config_error(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DeepSpeedConfig, overrides=overrides)
    load_config(DeepSpeedConfig, overrides=["bf16=true", "zero_stage=1", "grad_accum_dtype=fp32"])
