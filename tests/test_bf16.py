"""``model.autocast``: bf16 reaches every forward it names, float32 stays bit-for-bit what it was; and the
rollout engine's recorded log-probs match the learners' teacher-forced ones (``ppo.reuse_rollout_logprobs``)."""

import pytest
import torch

from fgrlhf.config import DeepSpeedConfig, ModelConfig
from fgrlhf.models import load_causal_lm, load_tokenizer
from fgrlhf.workers.packing import response_logprobs

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]]
RESPONSES = [[20, 21, 22, 23], [24, 25]]


def _logprobs(model, cfg):
    from fgrlhf.models import autocast

    with autocast(cfg, "cpu"):
        return response_logprobs(model, PROMPTS, RESPONSES, pad_id=0, micro_batch_size=2)


def test_autocast_bf16_changes_logprobs_a_little_and_fp32_not_at_all():
    tok = load_tokenizer("tiny")
    fp32_cfg, bf16_cfg = ModelConfig(), ModelConfig(autocast="bf16")
    model = load_causal_lm(fp32_cfg, tok)
    with torch.no_grad():  # the float32 path is the plain forward, untouched
        pack_ids = torch.tensor([PROMPTS[0] + RESPONSES[0]])
        plain = torch.log_softmax(model(input_ids=pack_ids).logits[0, 6:10].float(), -1)
    plain = plain.gather(1, torch.tensor(RESPONSES[0])[:, None]).squeeze(1)
    fp32, bf16 = _logprobs(model, fp32_cfg), _logprobs(model, bf16_cfg)
    assert torch.equal(fp32[0], plain)
    mask = fp32 != 0
    diff = (fp32 - bf16).abs()[mask]
    assert diff.max() > 0  # bf16 reached the forward
    assert diff.max() < 0.1  # and changed it by bf16 rounding, not more
    assert next(model.parameters()).dtype == torch.float32  # master weights stay float32


def test_autocast_config_checks():
    with pytest.raises(ValueError, match="float32 master weights"):
        ModelConfig(autocast="bf16", dtype="bfloat16")
    from fgrlhf.runtime.distributed import deepspeed_config

    ds = DeepSpeedConfig()
    assert "torch_autocast" not in deepspeed_config(ds)
    assert deepspeed_config(ds, autocast="bf16")["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}


def test_reward_and_reference_workers_score_under_autocast(tmp_path):
    from fgrlhf.reward.model import build_reward_model
    from fgrlhf.workers.reference_worker import ReferenceWorker
    from fgrlhf.workers.reward_worker import RewardWorker

    tok = load_tokenizer("tiny")
    build_reward_model("token", ModelConfig()).save_pretrained(tmp_path / "rm", tok)
    scores = {
        mode: RewardWorker(str(tmp_path / "rm"), 0, 2, ModelConfig(autocast=mode)).score(PROMPTS, RESPONSES)
        for mode in ("none", "bf16")
    }
    token = (scores["none"]["token"] - scores["bf16"]["token"]).abs()
    assert 0 < token.max() < 0.1
    ref = {
        mode: ReferenceWorker(ModelConfig(autocast=mode), 2).logprobs(PROMPTS, RESPONSES) for mode in ("none", "bf16")
    }
    assert 0 < (ref["none"] - ref["bf16"]).abs().max() < 0.1


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9), (0.0, 1.0)])
def test_generation_logprobs_equal_teacher_forced_in_fp32(temperature, top_p):
    """The log-probs the HF engine records while sampling (left-padded batch, KV cache) against the learners'
    teacher-forced forward (right-padded, one pass): equal to float tolerance. Raw logits on both sides, so
    the sampling settings do not matter."""
    from fgrlhf.workers.rollout_worker import HFEngine

    engine = HFEngine(ModelConfig(), device="cpu")
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13], [14, 15], [16, 17, 18, 19]]
    responses = engine.generate(prompts, max_new_tokens=12, temperature=temperature, top_p=top_p, seed=3)
    sampled = engine.sampled_logprobs()
    teacher = engine.logprobs(prompts, responses)
    assert sampled.shape == teacher.shape == (3, max(len(r) for r in responses))
    assert (sampled != 0).sum() == sum(len(r) for r in responses)  # every real token, nothing on padding
    assert (sampled - teacher).abs().max() < 1e-4


def test_reuse_rollout_logprobs_only_where_exact():
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    base = {"reward": {"model": "tiny-token"}}
    assert PPOTrainConfig.model_validate(base).reuses_rollout_logprobs
    for change in (
        {"ppo": {"reuse_rollout_logprobs": False}},
        {"rollout": {"engine": "vllm"}},
        {"policy": {"autocast": "bf16"}},
        {"policy": {"dtype": "bfloat16"}},
        {"policy_learner": {"bf16": True}},
    ):
        assert not PPOTrainConfig.model_validate({**base, **change}).reuses_rollout_logprobs, change
    with pytest.raises(ValueError, match="choose one"):
        PPOTrainConfig.model_validate({**base, "policy": {"autocast": "bf16"}, "critic_learner": {"bf16": True}})


def test_benchmark_batch_cuts_real_text_from_the_packaged_references(tokenizer):
    """benchmarks/bf16.py's batch: spans of the packaged AlpacaEval references (some are empty), of the asked
    lengths, each response continuing its prompt."""
    from benchmarks.bf16 import _batch

    prompts, responses = _batch(tokenizer, rows=4, prompt_tokens=40, response_tokens=12, seed=0)
    assert len(prompts) == len(responses) == 4
    assert all(20 <= len(p) <= 60 and 8 <= len(r) <= 12 for p, r in zip(prompts, responses))
