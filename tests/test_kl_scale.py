"""The task reward's fixed scale (``ppo.reward_scale: initial_std``): β means the same whatever the RM's units.

Hand-computed values for the scaled shaping and the scale itself; the property that two RMs whose scores
differ by a factor 10 give the same rewards, advantages, returns and KL weight in every reward mode; the
trainer's advantage phase fixing the scale on its first batch; and the scale's round trip through a
checkpoint's state.
"""

import json
import math
from pathlib import Path

import pytest
import torch

from fgrlhf.algorithms.ppo_core import compute_advantages, return_scale, task_rewards

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_task_reward_is_divided_by_the_scale_before_the_kl_term_hand_computed():
    mask = t([1, 1], [1, 1])
    logp = t([-1.0, -1.0], [-1.0, -1.0])
    ref = t([-1.5, -1.0], [-1.0, -2.0])  # k1 = [0.5, 0], [0, 1]
    zeros = torch.zeros(2, 2)
    common = {"kl_coef": 0.5, "kl_estimator": "k1", "whiten_rewards": False, "whiten_advantages": False}
    scaled = compute_advantages(
        "sequence", mask, logp, ref, zeros, sequence_reward=t(4.0, -2.0), reward_scale=2.0, **common
    )
    # R / 2 = [2, −1] on the last token, then −0.5·KL: row 0 [−0.25, 2], row 1 [0, −1 − 0.5]
    assert torch.allclose(scaled.rewards, t([-0.25, 2.0], [0.0, -1.5]))
    raw = compute_advantages("sequence", mask, logp, ref, zeros, sequence_reward=t(4.0, -2.0), **common)
    assert torch.allclose(raw.rewards, t([-0.25, 4.0], [0.0, -2.5]))  # the KL term is not divided
    with pytest.raises(ValueError, match="reward_scale must be > 0"):
        compute_advantages("sequence", mask, logp, ref, zeros, sequence_reward=t(4.0, -2.0), reward_scale=0.0, **common)


def test_return_scale_hand_computed():
    mask = t([1, 1], [1, 0])
    # sequence mode: returns R = [4, −2], mean 1, unbiased variance (9 + 9) / 1 = 18
    seq = task_rewards("sequence", mask, sequence_reward=t(4.0, -2.0))
    assert return_scale(seq, mask) == pytest.approx(math.sqrt(18))
    # token mode, centred: [1, 3], [0] has mean 4/3 → [−1/3, 5/3], [−4/3]: returns ±4/3, std 4√2/3
    tokens = t([1.0, 3.0], [0.0, 99.0])  # 99 on padding
    centred = task_rewards("token", mask, token_rewards=tokens, center_tokens=True)
    assert return_scale(centred, mask) == pytest.approx(4 * math.sqrt(2) / 3)
    # oracle_token: the returns are the gold of each response (prefix scores telescoped)
    prefix = t([0.0, 0.2, 0.5], [0.0, 0.3, 7.0])
    gold = task_rewards("oracle_token", mask, prefix_scores=prefix)
    assert return_scale(gold, mask) == pytest.approx(float(torch.tensor([0.5, 0.3]).std()))


def test_return_scale_refuses_a_degenerate_batch():
    mask = t([1, 1], [1, 0])
    assert return_scale(task_rewards("sequence", mask, sequence_reward=t(0.4, 0.4)), mask) is None  # all equal
    assert return_scale(task_rewards("sequence", t([1, 1]), sequence_reward=t(0.4)), t([1, 1])) is None  # one row


def _inputs(mode: str, factor: float, generator: torch.Generator, mask: torch.Tensor) -> dict:
    """The same random RM scores for ``mode``, multiplied by ``factor`` (a second RM in other units)."""
    rows, width = mask.shape
    if mode in ("sequence", "fine_grained_sequence", "oracle_sequence"):
        return {"sequence_reward": factor * torch.randn(rows, generator=generator)}
    if mode == "token":
        return {"token_rewards": factor * torch.randn(rows, width, generator=generator)}
    return {"prefix_scores": factor * torch.randn(rows, width + 1, generator=generator)}


@pytest.mark.parametrize("mode", ["sequence", "fine_grained_sequence", "oracle_sequence", "token", "oracle_token"])
@pytest.mark.parametrize("whiten_rewards", [False, True])
def test_rms_a_factor_ten_apart_give_the_same_advantages_and_kl_weight(mode, whiten_rewards):
    lengths = [3, 7, 1, 5, 6, 2]
    mask = torch.zeros(len(lengths), max(lengths))
    for row, n in enumerate(lengths):
        mask[row, :n] = 1.0
    generator = torch.Generator().manual_seed(7)
    logp = torch.randn(mask.shape, generator=generator)
    ref = logp - torch.rand(mask.shape, generator=generator)  # π above π_ref: a KL to pay for
    values = torch.randn(mask.shape, generator=generator)
    outs, raws, kl_weights = [], [], []
    for factor in (1.0, 10.0):
        inputs = _inputs(mode, factor, torch.Generator().manual_seed(3), mask)
        task = task_rewards(mode, mask, center_tokens=True, **inputs)
        scale = return_scale(task, mask)
        assert scale is not None
        common = {"kl_coef": 0.1, "kl_estimator": "k1_nonneg", "whiten_rewards": whiten_rewards}
        out = compute_advantages(mode, mask, logp, ref, values, reward_scale=scale, **common, **inputs)
        outs.append(out)
        raws.append(compute_advantages(mode, mask, logp, ref, values, **common, **inputs))
        # the KL term's share of the shaped return: β·ΣKL against the task return's spread the policy sees
        kl_weights.append(float(0.1 * out.kl.sum(-1).mean() / (task / scale).sum(-1).std()))
    one, ten = outs
    for name in ("kl", "rewards", "advantages", "returns"):
        assert torch.allclose(getattr(one, name), getattr(ten, name), atol=1e-5), name
    assert kl_weights[0] == pytest.approx(kl_weights[1], rel=1e-5)
    # in raw units the same β is a tenth as strong against the second RM: the advantages differ
    assert not torch.allclose(raws[0].advantages, raws[1].advantages, atol=1e-3)


# --- the trainer's advantage phase and the checkpointed state ---------------------------------------------
def _trainer(tmp_path, *overrides):
    from fgrlhf.config import load_config
    from fgrlhf.runtime.run_dir import open_run
    from fgrlhf.trainers.ppo.config import PPO_RUN, PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import PPOTrainer

    cfg = load_config(PPOTrainConfig, CONFIG, ["ppo.reward_mode=sequence", *overrides])
    return PPOTrainer(cfg, open_run(tmp_path, PPO_RUN, cfg))


def _batch(step: int, scores: list[float], lengths: list[int]):
    from fgrlhf.trainers.ppo.batch import RolloutBatch

    width = max(lengths)
    batch = RolloutBatch(step, list(range(len(scores))), [[1]] * len(scores))
    batch.response_ids = [[5] * n for n in lengths]
    batch.mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    batch.old_logprobs = -torch.ones(len(scores), width) * batch.mask
    batch.ref_logprobs = -1.5 * torch.ones(len(scores), width) * batch.mask  # KL 0.5 a token
    batch.old_values = torch.zeros(len(scores), width)
    batch.rm_sequence = torch.tensor(scores)
    return batch


def test_trainer_fixes_the_scale_on_its_first_batch(tmp_path):
    steps = [([1.0, 3.0, 2.0], [2, 4, 3]), ([5.0, -1.0, 0.0], [3, 1, 4])]
    runs = []
    for factor in (1.0, 10.0):
        trainer = _trainer(tmp_path, "ppo.kl_coef=0.2")
        results = []
        for step, (scores, lengths) in enumerate(steps):
            batch = _batch(step, [factor * s for s in scores], lengths)
            trainer._advantages(batch)
            results.append(batch.result)
        # the std of the first batch's returns [1, 3, 2] is 1 (in the RM's units), never re-measured
        assert trainer.shaping.reward_scale == pytest.approx(factor * 1.0)
        runs.append(results)
    for one, ten in zip(*runs):
        assert torch.allclose(one.advantages, ten.advantages, atol=1e-5)
        assert torch.allclose(one.rewards, ten.rewards, atol=1e-6)


def test_reward_scale_off_and_fixed_number(tmp_path):
    off = _trainer(tmp_path, "ppo.reward_scale=null")
    off._advantages(_batch(0, [1.0, 3.0, 2.0], [2, 4, 3]))
    assert off.shaping.reward_scale is None
    fixed = _trainer(tmp_path, "ppo.reward_scale=4")
    fixed._advantages(_batch(0, [1.0, 3.0, 2.0], [2, 4, 3]))
    assert fixed.shaping.reward_scale == 4.0


def test_a_degenerate_first_batch_measures_again_next_step(tmp_path, caplog):
    trainer = _trainer(tmp_path)
    with caplog.at_level("WARNING"):
        trainer._advantages(_batch(0, [0.5, 0.5, 0.5], [2, 4, 3]))
    assert trainer.shaping.reward_scale is None and "no reward scale yet" in caplog.text
    trainer._advantages(_batch(1, [1.0, 3.0, 2.0], [2, 4, 3]))
    assert trainer.shaping.reward_scale == pytest.approx(1.0)


def test_checkpoint_state_round_trip_restores_the_scale(tmp_path):
    from fgrlhf.trainers.ppo.guards import ShapingState

    trainer = _trainer(tmp_path)
    trainer._advantages(_batch(0, [1.0, 5.0, 3.0], [2, 4, 3]))
    assert trainer.shaping.reward_scale == pytest.approx(2.0)
    saved = json.loads(json.dumps(trainer.shaping.to_state()))  # as state.json stores it
    resumed = ShapingState.start(trainer.cfg.ppo, saved)
    assert resumed == trainer.shaping
    # the resumed run keeps the stored scale although its next batch has another spread
    resumed_trainer = _trainer(tmp_path)
    resumed_trainer.shaping = resumed
    resumed_trainer._advantages(_batch(1, [0.0, 10.0, 20.0], [2, 4, 3]))
    assert resumed_trainer.shaping.reward_scale == pytest.approx(2.0)
    # a checkpoint written before the scale existed: measured anew; with the scale off, a stored one is ignored
    assert ShapingState.start(trainer.cfg.ppo, {"step": 4}).reward_scale is None
    off = _trainer(tmp_path, "ppo.reward_scale=null").cfg.ppo
    assert ShapingState.start(off, saved).reward_scale is None
