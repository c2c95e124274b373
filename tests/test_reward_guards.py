"""Guards against reward hacking, each a ``ppo.*`` key that is off by default: the adaptive KL controller, reward
clipping, the no-EOS penalty and the length penalty, by hand and through the trainer's advantage phase."""

import json
from pathlib import Path

import pytest
import torch

from fgrlhf.algorithms.ppo_core import adaptive_kl_coef, compute_advantages, length_penalty, no_eos_penalty

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def plain(**overrides):
    return {"kl_coef": 0.0, "kl_estimator": "k1", "whiten_rewards": False, "whiten_advantages": False, **overrides}


def _config(*overrides):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    return load_config(PPOTrainConfig, CONFIG, ["ppo.reward_mode=sequence", *overrides])


def test_every_guard_is_off_by_default():
    ppo = _config().ppo
    assert (ppo.adaptive_kl, ppo.reward_clip, ppo.no_eos_penalty, ppo.length_penalty) == (None, None, None, None)


def test_guard_keys_are_validated():
    from fgrlhf.config import ConfigError

    with pytest.raises(ConfigError, match=r"adaptive_kl multiplies ppo\.kl_coef"):
        _config("ppo.adaptive_kl.target=6", "ppo.kl_coef=0")
    with pytest.raises(ConfigError, match=r"ppo\.reward_clip"):
        _config("ppo.reward_clip=-1")
    with pytest.raises(ConfigError, match=r"ppo\.length_penalty\.coef"):
        _config("ppo.length_penalty.target=20")  # a penalty needs its coefficient
    with pytest.raises(ConfigError, match=r"unknown key 'ppo\.adaptive_kl\.horizn'"):
        _config("ppo.adaptive_kl.target=6", "ppo.adaptive_kl.horizn=5")


# --- adaptive KL ------------------------------------------------------------------------------------------
def test_adaptive_kl_coef_hand_computed():
    # KL 9 against target 6: error 0.5, clipped to 0.2; 512 responses over a horizon of 10000: ×(1 + 0.2·0.0512)
    assert adaptive_kl_coef(0.1, 9.0, 6.0, 10000, 512) == pytest.approx(0.1 * 1.01024)
    # KL 5.4: error −0.1 → ×(1 − 0.1·0.0512); β shrinks below target
    assert adaptive_kl_coef(0.1, 5.4, 6.0, 10000, 512) == pytest.approx(0.1 * 0.99488)
    assert adaptive_kl_coef(0.1, 6.0, 6.0, 10000, 512) == pytest.approx(0.1)  # on target: unchanged
    with pytest.raises(ValueError, match="target > 0"):
        adaptive_kl_coef(0.1, 1.0, 0.0, 10000, 512)


def test_shaping_state_moves_kl_coef_only_when_asked_and_keeps_it_across_a_resume():
    from fgrlhf.trainers.ppo.guards import ShapingState

    fixed = _config("ppo.kl_coef=0.1").ppo
    state = ShapingState.start(fixed)
    state.update_kl_coef(fixed, observed_kl=50.0, n_samples=512)
    assert state.kl_coef == 0.1
    adaptive = _config("ppo.kl_coef=0.1", "ppo.adaptive_kl.target=6", "ppo.adaptive_kl.horizon=1000").ppo
    state = ShapingState.start(adaptive)
    state.update_kl_coef(adaptive, observed_kl=50.0, n_samples=100)  # error clipped to 0.2: ×1.02
    state.update_kl_coef(adaptive, observed_kl=50.0, n_samples=100)
    assert state.kl_coef == pytest.approx(0.1 * 1.02**2)
    resumed = ShapingState.start(adaptive, json.loads(json.dumps(state.to_state())))
    assert resumed.kl_coef == pytest.approx(0.1 * 1.02**2)
    # without the controller a saved β is not carried over: kl_coef is the config's
    assert ShapingState.start(fixed, state.to_state()).kl_coef == 0.1


# --- reward clipping --------------------------------------------------------------------------------------
def test_reward_clip_bounds_the_scaled_task_reward_not_the_kl():
    mask = t([1, 1], [1, 1])
    logp, ref = t([-1.0, -1.0], [-1.0, -1.0]), t([-3.0, -1.0], [-1.0, -1.0])  # KL 2 on one token
    zeros = torch.zeros(2, 2)
    out = compute_advantages(
        "sequence",
        mask,
        logp,
        ref,
        zeros,
        sequence_reward=t(10.0, -1.0),
        **plain(kl_coef=1.0, reward_scale=2.0, reward_clip=3.0),
    )
    # R / 2 = [5, −0.5], clipped to [3, −0.5]; the −1·KL of 2 on row 0's first token stays
    assert torch.allclose(out.rewards, t([-2.0, 3.0], [0.0, -0.5]))
    tokens = compute_advantages(
        "token",
        mask,
        zeros,
        zeros,
        zeros,
        token_rewards=t([4.0, -0.5], [-6.0, 1.0]),
        center_tokens=False,
        **plain(reward_clip=1.0),
    )
    assert torch.allclose(tokens.rewards, t([1.0, -0.5], [-1.0, 1.0]))  # each R_t clipped


# --- penalties --------------------------------------------------------------------------------------------
def test_length_and_no_eos_penalties_hand_computed():
    # coef·|L − L*| / L*, L* = 10: 5 → 0.25, 10 → 0, 20 → 0.5
    assert torch.allclose(length_penalty(t(5.0, 10.0, 20.0), 0.5, 10.0), t(0.25, 0.0, 0.5))
    assert torch.allclose(no_eos_penalty(torch.tensor([True, False]), 0.3), t(0.0, 0.3))
    with pytest.raises(ValueError, match="target must be > 0"):
        length_penalty(t(5.0), 0.5, 0.0)


@pytest.mark.parametrize("mode", ["sequence", "token"])
def test_penalty_lands_on_the_last_real_token_in_every_mode(mode):
    mask = t([1, 1, 1], [1, 0, 0])
    zeros = torch.zeros(2, 3)
    reward = {"sequence_reward": t(1.0, 1.0)} if mode == "sequence" else {"token_rewards": zeros}
    base = compute_advantages(mode, mask, zeros, zeros, zeros, center_tokens=False, **reward, **plain())
    out = compute_advantages(
        mode, mask, zeros, zeros, zeros, center_tokens=False, penalty=t(0.5, 2.0), **reward, **plain()
    )
    assert torch.allclose(out.rewards - base.rewards, t([0.0, 0.0, -0.5], [-2.0, 0.0, 0.0]))


def _trainer(tmp_path, *overrides):
    from fgrlhf.runtime.run_dir import open_run
    from fgrlhf.trainers.ppo.config import PPO_RUN
    from fgrlhf.trainers.ppo.trainer import PPOTrainer

    cfg = _config("rollout.max_new_tokens=4", *overrides)
    trainer = PPOTrainer(cfg, open_run(tmp_path, PPO_RUN, cfg))
    trainer.eos_token_id = 2
    return trainer


def _batch(step, response_ids):
    from fgrlhf.trainers.ppo.batch import RolloutBatch

    width = max(len(r) for r in response_ids)
    batch = RolloutBatch(step, list(range(len(response_ids))), [[1]] * len(response_ids))
    batch.response_ids = response_ids
    batch.mask = torch.tensor([[1.0] * len(r) + [0.0] * (width - len(r)) for r in response_ids])
    zeros = torch.zeros(len(response_ids), width)
    batch.old_logprobs, batch.ref_logprobs, batch.old_values = zeros, zeros, zeros.clone()
    batch.rm_sequence = torch.tensor([1.0, 2.0, 3.0])
    return batch


RESPONSES = [[7, 2], [7, 7, 7, 7], [7, 7, 7, 2]]  # EOS = 2: row 1 was cut off at the 4-token budget
# raw units, no KL, no rescaling: the penalties' arithmetic stays visible in the rewards
RAW = ("ppo.reward_scale=null", "ppo.kl_coef=0", "ppo.whiten_rewards=false")


def _rewards(trainer, step, response_ids):
    batch = _batch(step, response_ids)
    trainer._advantages(batch)
    return batch.result.rewards


def test_trainer_penalises_responses_cut_off_without_eos(tmp_path):
    plain_run, penalised = _trainer(tmp_path, *RAW), _trainer(tmp_path, *RAW, "ppo.no_eos_penalty=0.5")
    diff = _rewards(penalised, 0, RESPONSES) - _rewards(plain_run, 0, RESPONSES)
    assert torch.allclose(diff, t([0, 0, 0, 0], [0, 0, 0, -0.5], [0, 0, 0, 0]))


def test_trainer_length_penalty_targets_the_first_batch_mean_length(tmp_path):
    trainer = _trainer(tmp_path, *RAW, "ppo.length_penalty.coef=0.3")
    _rewards(trainer, 0, RESPONSES)
    assert trainer.shaping.length_target == pytest.approx(10 / 3)  # lengths 2, 4, 4
    rewards = _rewards(trainer, 1, [[2], [7, 7, 7, 2], [7, 2]])  # the target stays
    assert trainer.shaping.length_target == pytest.approx(10 / 3)
    # lengths 1, 4, 2 against 10/3: penalties 0.3·|L − 10/3|/(10/3) = 0.21, 0.06, 0.12 at each last token
    assert torch.allclose(rewards.sum(1), t(1.0 - 0.21, 2.0 - 0.06, 3.0 - 0.12), atol=1e-6)
    fixed = _trainer(tmp_path, *RAW, "ppo.length_penalty.coef=0.3", "ppo.length_penalty.target=2")
    _rewards(fixed, 0, RESPONSES)
    assert fixed.shaping.length_target == 2.0
