"""The DeepSpeed config fgrlhf builds, as DeepSpeed itself parses it: ZeRO-3 parameter persistence and the
gradient-accumulation dtype."""

from pathlib import Path

import pytest

from fgrlhf.config import ConfigError, DeepSpeedConfig, load_config
from fgrlhf.runtime.distributed import deepspeed_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


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


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_models_accumulate_in_fp32_unless_told_otherwise(stage):
    # Unset, DeepSpeed itself would accumulate in the model's dtype (bf16): fgrlhf's default is fp32.
    assert parsed(DeepSpeedConfig(bf16=True, zero_stage=stage, grad_accum_dtype="bf16")).grad_accum_dtype == "bf16"
    assert DeepSpeedConfig.model_validate({"bf16": True, "zero_stage": stage}).grad_accum_dtype == "fp32"
    assert parsed(DeepSpeedConfig(bf16=True, zero_stage=stage)).grad_accum_dtype == "fp32"
    explicit = DeepSpeedConfig(bf16=True, zero_stage=stage, grad_accum_dtype="bf16")
    assert deepspeed_config(explicit)["data_types"] == {"grad_accum_dtype": "bf16"}
    # fp32 models have nothing to widen; stage 0 cannot mix (DeepSpeed raises NotImplementedError there).
    assert "data_types" not in deepspeed_config(DeepSpeedConfig(zero_stage=stage))
    assert "data_types" not in deepspeed_config(DeepSpeedConfig(bf16=True, zero_stage=0))


def test_the_7b_configs_accumulate_in_fp32():
    from fgrlhf.reward.train import RMTrainConfig
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    rm = load_config(RMTrainConfig, CONFIGS / "rm-token-llama7b-8xa100.yaml")
    assert rm.deepspeed.bf16 and rm.deepspeed.gradient_accumulation_steps > 1
    assert rm.deepspeed.grad_accum_dtype == "fp32"
    assert "grad_accum_dtype: fp32" in (CONFIGS / "rm-token-llama7b-8xa100.yaml").read_text()  # said, not implied
    ppo = load_config(PPOTrainConfig, CONFIGS / "ppo-llama7b-8xa100.yaml")
    for role in ("policy_learner", "critic_learner"):
        assert deepspeed_config(ppo.learner_ds(role))["data_types"] == {"grad_accum_dtype": "fp32"}


def test_deepspeed_is_pinned_to_the_tested_range():
    """The validator and these tests assume 0.19's defaults (grad_accum_dtype, ZeRO-3 persistence): the
    dependency admits no other minor version, and the installed one is inside it."""
    from importlib.metadata import version

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "deepspeed"]
    assert requirement.specifier.contains(version("deepspeed"))
    assert not requirement.specifier.contains("0.18.9") and not requirement.specifier.contains("0.20.0")


def test_learner_group_timeout_is_a_validated_setting():
    assert DeepSpeedConfig().timeout_s == 1800
    assert load_config(DeepSpeedConfig, overrides=["timeout_s=90"]).timeout_s == 90
    with pytest.raises(ConfigError, match="timeout_s"):
        load_config(DeepSpeedConfig, overrides=["timeout_s=0"])


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


class _Engine:
    """What :func:`skip_lone_rank_allreduce` reads of a DeepSpeed engine."""

    def __init__(self, stage: int, dp_world_size: int):
        self.stage, self.dp_world_size, self.enable_backward_allreduce = stage, dp_world_size, True

    def zero_optimization_stage(self) -> int:
        return self.stage


@pytest.mark.parametrize(("stage", "ranks", "skipped"), [(0, 1, True), (0, 2, False), (1, 1, False), (3, 1, False)])
def test_only_a_lone_zero0_rank_skips_the_gradient_allreduce(stage, ranks, skipped):
    from fgrlhf.runtime.distributed import skip_lone_rank_allreduce

    engine = _Engine(stage, ranks)
    assert skip_lone_rank_allreduce(engine) is skipped
    assert engine.enable_backward_allreduce is not skipped


def test_learner_adamw_is_fused_on_cpu_and_updates_as_the_unfused_one():
    import torch

    from fgrlhf.runtime.distributed import adamw

    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 3))
    plain_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 3))
    plain_model.load_state_dict(fused_model.state_dict())
    start = fused_model[0].weight.detach().clone()
    fused = adamw(list(fused_model.parameters()), lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(plain_model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    assert fused.defaults["fused"] is True
    for step in range(3):
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
        for model, optimizer in ((fused_model, fused), (plain_model, plain)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(fused_model.parameters(), plain_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert not torch.equal(fused_model[0].weight, start)  # it stepped


def test_learner_adamw_is_unfused_where_torch_has_no_fused_kernel():
    import torch

    from fgrlhf.runtime.distributed import adamw

    assert not adamw([torch.nn.Parameter(torch.zeros(2, device="meta"))], lr=1e-3, weight_decay=0.0).defaults["fused"]
