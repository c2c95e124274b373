"""compute_advantages: the driver's whole advantage phase as one pure function, against hand-computed values."""

import math

import pytest
import torch

from fgrlhf.algorithms.ppo_core import compute_advantages, compute_gae, compute_rewards, masked_rescale


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


MASK = t([1, 1, 1], [1, 1, 0])  # row 0: 3 tokens, row 1: 2 tokens


def plain(**overrides):
    """No rescaling or whitening, γ = λ = 1, k1 KL: the arithmetic of each stage stays visible."""
    return {
        "kl_coef": 0.5,
        "kl_estimator": "k1",
        "whiten_rewards": False,
        "whiten_advantages": False,
        "gamma": 1.0,
        "lam": 1.0,
        **overrides,
    }


def test_sequence_mode_hand_computed():
    logp = t([-1.0, -1.0, -1.0], [-1.0, -1.0, 0.0])
    ref = t([-1.5, -1.0, -0.5], [-1.0, -2.0, 0.0])
    # k1 = logπ − logπref = [0.5, 0, −0.5], [0, 1, (pad)]
    values = t([0.5, 0.5, 0.5], [1.0, 1.0, 9.0])  # the 9 sits on padding: never read
    out = compute_advantages("sequence", MASK, logp, ref, values, sequence_reward=t(2.0, 1.0), **plain())
    assert torch.allclose(out.kl, t([0.5, 0.0, -0.5], [0.0, 1.0, 0.0]))
    # r_t = −0.5·KL_t, R on the last real token: row 0 [−0.25, 0, 0.25 + 2], row 1 [0, −0.5 + 1, pad]
    assert torch.allclose(out.rewards, t([-0.25, 0.0, 2.25], [0.0, 0.5, 0.0]))
    # γ = λ = 1: A_t = Σ_{k≥t} r_k − V_t. Row 0: rewards-to-go [2.0, 2.25, 2.25] − 0.5;
    # row 1: [0.5, 0.5] − 1. Returns = A + V = the rewards-to-go.
    assert torch.allclose(out.advantages, t([1.5, 1.75, 1.75], [-0.5, -0.5, 0.0]))
    assert torch.allclose(out.returns, t([2.0, 2.25, 2.25], [0.5, 0.5, 0.0]))


def test_rescaled_rewards_and_whitened_advantages_hand_computed():
    mask = t([1, 1], [1, 0])
    zeros = torch.zeros(2, 2)
    out = compute_advantages(
        "sequence",
        mask,
        zeros,
        zeros,
        zeros,
        sequence_reward=t(3.0, -3.0),
        **plain(kl_coef=0.0, whiten_rewards=True, whiten_advantages=True),
    )
    # Real-token rewards {0, 3, −3}: mean 0, unbiased variance (0 + 9 + 9) / 2 = 9, σ = 3; divided, not shifted.
    assert torch.allclose(out.rewards, t([0.0, 1.0], [-1.0, 0.0]), atol=1e-6)
    assert torch.allclose(out.returns, t([1.0, 1.0], [-1.0, 0.0]), atol=1e-6)  # V = 0: the rewards-to-go
    # Advantages {1, 1, −1}: mean 1/3, unbiased variance ((2/3)² + (2/3)² + (4/3)²) / 2 = 4/3.
    std = math.sqrt(4 / 3)
    assert torch.allclose(out.advantages, t([(2 / 3) / std, (2 / 3) / std], [(-4 / 3) / std, 0.0]), atol=1e-5)


def test_token_mode_centres_the_rm_rewards_hand_computed():
    mask = t([1, 1], [1, 0])
    zeros = torch.zeros(2, 2)
    tokens = t([1.0, 3.0], [2.0, 99.0])  # 99 on padding
    centred = compute_advantages("token", mask, zeros, zeros, zeros, token_rewards=tokens, **plain())
    # mean over real tokens (1 + 3 + 2) / 3 = 2: [−1, 1], [0, pad]; returns-to-go [0, 1], [0]
    assert torch.allclose(centred.rewards, t([-1.0, 1.0], [0.0, 0.0]))
    assert torch.allclose(centred.advantages, t([0.0, 1.0], [0.0, 0.0]))
    raw = compute_advantages(
        "token", mask, zeros, zeros, zeros, token_rewards=tokens, **plain(center_tokens=False, gamma=0.5)
    )
    # γ = 0.5: row 0 [1 + 0.5·3, 3] = [2.5, 3]; row 1 [2]
    assert torch.allclose(raw.rewards, t([1.0, 3.0], [2.0, 0.0]))
    assert torch.allclose(raw.returns, t([2.5, 3.0], [2.0, 0.0]))


def test_oracle_token_telescopes_the_prefix_gold_and_never_centres():
    mask = t([1, 1], [1, 0])
    zeros = torch.zeros(2, 2)
    prefix = t([0.0, 0.2, 0.5], [0.0, 0.3, 7.0])  # g(empty), g(y≤1), g(y≤2); row 1 ends after one token
    out = compute_advantages(
        "oracle_token", mask, zeros, zeros, zeros, prefix_scores=prefix, **plain(center_tokens=True)
    )
    # r_t = g(y≤t) − g(y<t): [0.2, 0.3], [0.3, pad]; centring would have subtracted their mean 0.2667
    assert torch.allclose(out.rewards, t([0.2, 0.3], [0.3, 0.0]))
    assert torch.allclose(out.returns[:, 0], t(0.5, 0.3))  # the return from the first token is the gold


def test_gae_with_lambda_below_one_hand_computed():
    mask = t([1, 1])
    zeros = torch.zeros(1, 2)
    values = t([0.5, 0.25])
    out = compute_advantages("oracle_sequence", mask, zeros, zeros, values, sequence_reward=t(1.0), **plain(lam=0.5))
    # δ_1 = 1 + 0 − 0.25 = 0.75 = A_1; δ_0 = 0 + 0.25 − 0.5 = −0.25, A_0 = −0.25 + 0.5·0.75 = 0.125
    assert torch.allclose(out.advantages, t([0.125, 0.75]))
    assert torch.allclose(out.returns, t([0.625, 1.0]))


def test_kl_estimator_and_clamp_shape_the_reward():
    mask = t([1, 1])
    logp, ref = t([-1.0, -1.0]), t([-3.0, -0.5])  # logπ − logπref = [2, −0.5]
    out = compute_advantages(
        "sequence",
        mask,
        logp,
        ref,
        torch.zeros(1, 2),
        sequence_reward=t(0.0),
        **plain(kl_coef=1.0, kl_estimator="k1_nonneg", kl_clamp=1.5),
    )
    # k1_nonneg = max(0, ·) = [2, 0], clamped to [1.5, 0]; r_t = −KL_t
    assert torch.allclose(out.kl, t([1.5, 0.0]))
    assert torch.allclose(out.rewards, t([-1.5, 0.0]))


def test_each_mode_needs_its_own_reward_input():
    zeros = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="token_rewards"):
        compute_advantages("token", MASK, zeros, zeros, zeros, sequence_reward=t(1.0, 1.0), **plain())
    with pytest.raises(ValueError, match="sequence_reward"):
        compute_advantages("sequence", MASK, zeros, zeros, zeros, token_rewards=zeros, **plain())


@pytest.mark.parametrize("mode", ["sequence", "fine_grained_sequence", "oracle_sequence"])
@pytest.mark.parametrize("whiten", [False, True])
def test_equal_rewards_at_different_lengths_give_equal_returns(mode, whiten):
    """The property behind masked_rescale and γ = λ = 1: a response's return from its first token is its
    reward, whatever its length and whatever the critic says (with no KL, as at the first step)."""
    generator = torch.Generator().manual_seed(0)
    lengths = [1, 2, 5, 9, 16]
    mask = torch.zeros(len(lengths), max(lengths))
    for row, n in enumerate(lengths):
        mask[row, :n] = 1.0
    logp = torch.randn(mask.shape, generator=generator) * mask
    values = torch.randn(mask.shape, generator=generator)
    out = compute_advantages(
        mode,
        mask,
        logp,
        logp.clone(),
        values,
        sequence_reward=torch.full((len(lengths),), 0.7),
        kl_coef=0.1,
        kl_estimator="k3",
        whiten_rewards=whiten,
        whiten_advantages=True,
    )
    first = out.returns[:, 0]
    assert torch.allclose(first, first[0].expand_as(first), atol=1e-5)
    assert first[0] > 0  # rescaling divides by a positive scalar: the sign survives


def test_matches_the_stages_it_composes():
    """On random input, the same tensors as the stage functions called one after the other."""
    generator = torch.Generator().manual_seed(1)
    mask = t([1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0])
    logp, ref, values = (torch.randn(3, 4, generator=generator) for _ in range(3))
    score = torch.randn(3, generator=generator)
    out = compute_advantages(
        "sequence",
        mask,
        logp,
        ref,
        values,
        sequence_reward=score,
        kl_coef=0.2,
        kl_estimator="k2",
        whiten_rewards=True,
        whiten_advantages=False,
        gamma=0.9,
        lam=0.8,
    )
    kl = 0.5 * (logp - ref).square() * mask
    rewards = masked_rescale(compute_rewards("sequence", kl, mask, 0.2, sequence_reward=score), mask)
    advantages, returns = compute_gae(rewards, values, mask, 0.9, 0.8)
    assert torch.allclose(out.rewards, rewards)
    assert torch.allclose(out.returns, returns)
    assert torch.allclose(out.advantages, advantages)
