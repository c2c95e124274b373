import math

import pytest
import torch

from fgrlhf.algorithms.ppo_core import (
    center_token_rewards,
    compute_gae,
    compute_rewards,
    entropy_bonus,
    entropy_from_logits,
    kl_penalty,
    last_token_index,
    logprobs_from_logits,
    masked_mean,
    masked_rescale,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)
from tests.helpers import t

# ---------------------------------------------------------------- KL estimators
LOGP = t([-1.0, -2.0])
REF = t([-1.5, -1.0])  # logπ − logπref = [0.5, −1.0]


def test_kl_k1_k2_k3_hand_computed():
    assert torch.allclose(kl_penalty(LOGP, REF, "k1"), t([0.5, -1.0]))
    # ½·0.5² = 0.125, ½·1² = 0.5
    assert torch.allclose(kl_penalty(LOGP, REF, "k2"), t([0.125, 0.5]))
    # d = logπref − logπ = [−0.5, 1]: e^−0.5 − 1 + 0.5 = 0.10653, e − 1 − 1 = 0.71828
    expected = t([math.exp(-0.5) - 0.5, math.e - 2.0])
    assert torch.allclose(kl_penalty(LOGP, REF, "k3"), expected, atol=1e-6)


def test_kl_k1_nonneg_hand_computed():
    # AlpacaFarm's shaping max(0, logπ − logπref): 0.5 stays, −1.0 (π less likely than π_ref) becomes 0
    assert torch.allclose(kl_penalty(LOGP, REF, "k1_nonneg"), t([0.5, 0.0]))
    assert torch.allclose(kl_penalty(LOGP, REF, "k1_nonneg", clamp=0.3), t([0.3, 0.0]))


def test_kl_clamp_and_unknown_estimator():
    assert torch.allclose(kl_penalty(LOGP, REF, "k1", clamp=0.3), t([0.3, -0.3]))
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(LOGP, REF, "k4")


# ---------------------------------------------------------------- reward shaping
KL = t([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8])
MASK = t([1, 1, 1, 0], [1, 1, 0, 0])  # right-padded: lengths 3 and 2


def test_sequence_reward_lands_on_last_real_token():
    assert last_token_index(MASK).tolist() == [2, 1]  # mask.sum − 1, the EOS position
    rewards = compute_rewards("sequence", KL, MASK, kl_coef=0.5, sequence_reward=torch.tensor([2.0, -1.0]))
    # row 0: −0.5·[0.1, 0.2, 0.3] = [−0.05, −0.1, −0.15], +2 at index 2 → 1.85; padding 0
    # row 1: −0.5·[0.5, 0.6] = [−0.25, −0.3], −1 at index 1 → −1.3
    expected = t([-0.05, -0.1, 1.85, 0.0], [-0.25, -1.3, 0.0, 0.0])
    assert torch.allclose(rewards, expected, atol=1e-6)


def test_fine_grained_sequence_has_sequence_arithmetic():
    seq = torch.tensor([2.0, -1.0])
    a = compute_rewards("fine_grained_sequence", KL, MASK, 0.5, sequence_reward=seq)
    assert torch.allclose(a, t([-0.05, -0.1, 1.85, 0.0], [-0.25, -1.3, 0.0, 0.0]), atol=1e-6)


def test_sequence_reward_gradient_reaches_only_last_token():
    seq = torch.tensor([2.0, -1.0], requires_grad=True)
    rewards = compute_rewards("sequence", KL, MASK, 0.5, sequence_reward=seq)
    # weight position t by 10^t: dΣ/dR_b = 10^(last index) → 100 for row 0, 10 for row 1
    (rewards * t([1, 10, 100, 1000], [1, 10, 100, 1000])).sum().backward()
    assert seq.grad.tolist() == [100.0, 10.0]


def test_token_rewards_with_and_without_kl():
    token = t([1, 2, 3, 4], [5, 6, 7, 8])
    # β = 0: the paper's literal [R_1 .. R_n], padding zeroed
    assert torch.allclose(compute_rewards("token", KL, MASK, 0.0, token_rewards=token), t([1, 2, 3, 0], [5, 6, 0, 0]))
    # β = 0.5: [1 − .05, 2 − .1, 3 − .15], [5 − .25, 6 − .3]
    expected = t([0.95, 1.9, 2.85, 0], [4.75, 5.7, 0, 0])
    assert torch.allclose(compute_rewards("token", KL, MASK, 0.5, token_rewards=token), expected, atol=1e-6)


def test_center_token_rewards_hand_computed():
    token = t([1, 2, 3, 4], [5, 6, 7, 8])
    # real tokens (MASK) 1, 2, 3, 5, 6 -> mean 17/5 = 3.4; padding stays 0
    expected = t([-2.4, -1.4, -0.4, 0], [1.6, 2.6, 0, 0])
    assert torch.allclose(center_token_rewards(token, MASK), expected, atol=1e-6)
    # a constant added to every token reward (invisible to Eq. 3) changes nothing after centering
    assert torch.allclose(center_token_rewards(token + 10.0, MASK), expected, atol=1e-5)


def test_empty_response_row_gets_no_reward():
    mask = t([0, 0], [1, 0])
    rewards = compute_rewards("sequence", torch.zeros(2, 2), mask, 0.1, sequence_reward=torch.tensor([5.0, 3.0]))
    assert rewards.tolist() == [[0.0, 0.0], [3.0, 0.0]]


def test_compute_rewards_validates_inputs():
    with pytest.raises(ValueError, match="sequence_reward"):
        compute_rewards("sequence", KL, MASK, 0.1)
    with pytest.raises(ValueError, match="token_rewards"):
        compute_rewards("token", KL, MASK, 0.1)
    with pytest.raises(ValueError, match="token_rewards"):
        compute_rewards("token", KL, MASK, 0.1, sequence_reward=torch.ones(2), token_rewards=KL)
    with pytest.raises(ValueError, match="unknown reward mode"):
        compute_rewards("dense", KL, MASK, 0.1, sequence_reward=torch.ones(2))


# ---------------------------------------------------------------- masked statistics
VALUES = t([1, 2, 3], [4, 5, 6])
VMASK = t([1, 1, 0], [1, 0, 0])  # selects {1, 2, 4}


def test_masked_mean_and_var():
    assert masked_mean(VALUES, VMASK).item() == pytest.approx(7 / 3)  # (1 + 2 + 4) / 3
    assert torch.allclose(masked_mean(VALUES, VMASK, dim=-1), t(1.5, 4.0))
    # deviations from 7/3: −4/3, −1/3, 5/3 → squares 16/9 + 1/9 + 25/9 = 42/9
    assert masked_var(VALUES, VMASK, unbiased=False).item() == pytest.approx(42 / 9 / 3)  # 14/9
    assert masked_var(VALUES, VMASK, unbiased=True).item() == pytest.approx(42 / 9 / 2)  # 7/3
    # a single token: Bessel's correction is undefined and skipped → variance 0
    assert masked_var(VALUES, t([0, 0, 0], [0, 1, 0])).item() == 0.0


def test_masked_whiten_hand_computed():
    std = math.sqrt(7 / 3)  # unbiased, from the test above
    # (x − 7/3)/std: −0.8729, −0.2182, 1.0911; 0 outside the mask
    expected = t([(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0])
    assert torch.allclose(masked_whiten(VALUES, VMASK), expected, atol=1e-5)


def test_masked_rescale_hand_computed():
    # x / std with std = √(7/3) = 1.5275: 1 → 0.6547, 2 → 1.3093, 4 → 2.6186; no shift, 0 outside the mask
    std = math.sqrt(7 / 3)
    expected = t([1 / std, 2 / std, 0.0], [4 / std, 0.0, 0.0])
    assert torch.allclose(masked_rescale(VALUES, VMASK), expected, atol=1e-5)


def _normalised_returns(lengths: list[int], sequence_rewards: list[float]) -> torch.Tensor:
    """Return at t = 0 through compute_rewards → masked_rescale → compute_gae (γ = λ = 1, V = 0, no KL)."""
    width = max(lengths)
    mask = torch.tensor([[1.0] * n + [0.0] * (width - n) for n in lengths])
    rewards = compute_rewards(
        "sequence", torch.zeros_like(mask), mask, kl_coef=0.1, sequence_reward=torch.tensor(sequence_rewards)
    )
    _, returns = compute_gae(masked_rescale(rewards, mask), torch.zeros_like(mask), mask, 1.0, 1.0)
    return returns[:, 0]


def test_reward_normalisation_is_length_neutral():
    # Equal R = 0.3 at 10/20/30/40 tokens: equal returns (the shifted whitening gave +3.17 … −2.57).
    returns = _normalised_returns([10, 20, 30, 40], [0.3] * 4)
    assert torch.allclose(returns, returns[0].expand(4), atol=1e-6)
    assert returns[0] > 0  # sign of R kept
    # R rising with length: the better, longer response gets the higher return.
    rising = _normalised_returns([10, 20, 30, 40], [0.30, 0.35, 0.40, 0.45])
    assert torch.all(rising[1:] > rising[:-1])


def test_reward_normalisation_small_case_hand_computed():
    # lengths 1 and 2, R = 2 and 4: real-token rewards {2, 0, 4}, mean 2, unbiased var (0 + 4 + 4)/2 = 4,
    # std 2 → rewards {1, 0, 2}; γ = λ = 1, V = 0 → returns at t = 0 are 1 and 0 + 2 = 2, exactly R / 2.
    assert torch.allclose(_normalised_returns([1, 2], [2.0, 4.0]), t(1.0, 2.0), atol=1e-6)


# ---------------------------------------------------------------- GAE
def test_gae_hand_computed_right_padded_batch():
    rewards = t([1.0, 0.0, 2.0, 9.0], [0.0, 1.0, 9.0, 9.0])  # 9s sit on padding
    values = t([0.5, 1.0, 1.5, 7.0], [0.2, 0.4, 5.0, 5.0])
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.5)  # γλ = 0.45
    # row 0: δ2 = 2 + 0.9·0 − 1.5 = 0.5 (V past the end is 0, not the padded 7) → A2 = 0.5
    #        δ1 = 0 + 0.9·1.5 − 1.0 = 0.35 → A1 = 0.35 + 0.45·0.5 = 0.575
    #        δ0 = 1 + 0.9·1.0 − 0.5 = 1.4  → A0 = 1.4 + 0.45·0.575 = 1.65875
    # row 1: δ1 = 1 + 0 − 0.4 = 0.6 → A1 = 0.6; δ0 = 0 + 0.9·0.4 − 0.2 = 0.16 → A0 = 0.16 + 0.45·0.6 = 0.43
    assert torch.allclose(adv, t([1.65875, 0.575, 0.5, 0.0], [0.43, 0.6, 0.0, 0.0]), atol=1e-6)
    # returns = A + V inside the mask, 0 outside
    assert torch.allclose(ret, t([2.15875, 1.575, 2.0, 0.0], [0.63, 1.0, 0.0, 0.0]), atol=1e-6)


def test_gae_with_gamma_lambda_one_is_monte_carlo():
    # γ = λ = 1 (AlpacaFarm): A_t = Σ_{k≥t} r_k − V_t, returns = reward-to-go = 1 everywhere
    adv, ret = compute_gae(t([0.0, 0.0, 1.0]), t([0.2, 0.4, 0.6]), torch.ones(1, 3), 1.0, 1.0)
    assert torch.allclose(adv, t([0.8, 0.6, 0.4]), atol=1e-6)
    assert torch.allclose(ret, t([1.0, 1.0, 1.0]), atol=1e-6)


def test_gae_carries_no_gradient():
    values = torch.zeros(1, 2, requires_grad=True)
    adv, ret = compute_gae(torch.ones(1, 2), values, torch.ones(1, 2), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------- PPO losses
def test_policy_loss_hand_computed_with_gradient():
    ratios = [1.5, 0.5, 1.1, 0.5, 3.0]
    advantages = t([1.0, 1.0, -2.0, -1.0, 50.0])  # last position is padding
    mask = t([1, 1, 1, 1, 0])
    old = torch.zeros(1, 5)
    logprobs = torch.log(t(ratios)).requires_grad_()
    loss, stats = policy_loss(logprobs, old, advantages, mask, clip_eps=0.2)
    # per token −min(ρA, clip(ρ, .8, 1.2)A):
    #   ρ=1.5, A=1:  min(1.5, 1.2) = 1.2    → −1.2  (clipped)
    #   ρ=0.5, A=1:  min(0.5, 0.8) = 0.5    → −0.5
    #   ρ=1.1, A=−2: min(−2.2, −2.2)        → 2.2
    #   ρ=0.5, A=−1: min(−0.5, −0.8) = −0.8 → 0.8   (clipped)
    # mean = (−1.2 − 0.5 + 2.2 + 0.8) / 4 = 0.325
    assert loss.item() == pytest.approx(0.325, abs=1e-6)
    assert stats["clip_fraction"].item() == pytest.approx(0.5)
    # approx_kl = mean of (ρ − 1) − log ρ over the 4 real tokens
    k3 = [(r - 1) - math.log(r) for r in ratios[:4]]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 4, abs=1e-6)
    loss.backward()
    # d/dlogπ of −ρA is −ρA; mean over 4; clipped tokens and padding get 0
    #   token 1: −0.5·1/4 = −0.125; token 2: −1.1·(−2)/4 = 0.55
    assert torch.allclose(logprobs.grad, t([0.0, -0.125, 0.55, 0.0, 0.0]), atol=1e-6)


def test_value_loss_hand_computed():
    values = t([0.5, 0.1, -0.5, 100.0])
    old = torch.zeros(1, 4)
    returns = t([1.0, 0.0, 0.0, 0.0])
    mask = t([1, 1, 1, 0])
    loss, stats = value_loss(values, old, returns, mask, clip_eps=0.2)
    # V_clip = [0.2, 0.1, −0.2]
    # t0: (V−R)² = 0.25, (V_clip−R)² = 0.64 → 0.64 (clipped is larger)
    # t1: 0.01 vs 0.01 → 0.01 (tie, not counted as clipped)
    # t2: 0.25 vs 0.04 → 0.25
    # loss = ½·(0.64 + 0.01 + 0.25)/3 = 0.15
    assert loss.item() == pytest.approx(0.15, abs=1e-6)
    assert stats["vf_clip_fraction"].item() == pytest.approx(1 / 3)


# ---------------------------------------------------------------- logits helpers
def test_logprobs_and_entropy_from_logits():
    ln2 = math.log(2)
    logits = torch.tensor([[[0.0, 0.0, ln2], [0.0, 0.0, 0.0]]])  # softmax [¼, ¼, ½] and uniform ⅓
    lp = logprobs_from_logits(logits, torch.tensor([[2, 0]]))
    assert torch.allclose(lp, t([math.log(0.5), math.log(1 / 3)]), atol=1e-6)
    # H = −(2·¼·ln¼ + ½·ln½) = 1.5·ln 2; uniform over 3 → ln 3
    assert torch.allclose(entropy_from_logits(logits), t([1.5 * ln2, math.log(3)]), atol=1e-6)
    # shift-invariant and stable for large logits
    assert torch.allclose(logprobs_from_logits(logits + 1000.0, torch.tensor([[2, 0]])), lp, atol=1e-3)


def test_entropy_bonus_hand_computed_and_its_gradient():
    ln2 = math.log(2)
    # softmax [¼, ¼, ½]: H = 1.5·ln 2, ∂H/∂z = −p·(log p + H) = [⅛, ⅛, −¼]·ln 2; the padded position is masked out
    logits = torch.tensor([[[0.0, 0.0, ln2], [5.0, 0.0, 0.0]]], requires_grad=True)
    mask = t([[1.0, 0.0]])
    term, entropy = entropy_bonus(logits, mask, coef=0.1)
    assert entropy.item() == pytest.approx(1.5 * ln2, abs=1e-6)
    assert term.item() == pytest.approx(-0.15 * ln2, abs=1e-6)
    term.backward()
    want = torch.tensor([[[-0.0125 * ln2, -0.0125 * ln2, 0.025 * ln2], [0.0, 0.0, 0.0]]])
    assert torch.allclose(logits.grad, want, atol=1e-7)


def test_entropy_bonus_without_weight_is_a_statistic_only():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    mask = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    term, entropy = entropy_bonus(logits, mask, coef=0.0)
    # no graph through the vocabulary-wide softmax for a zero gradient; the reported value is unchanged
    assert not term.requires_grad and not entropy.requires_grad
    assert torch.allclose(entropy, (entropy_from_logits(logits.detach()) * mask).sum() / mask.sum())
    # a surrogate plus the zero-weighted term has the surrogate's gradient
    surrogate = logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long)).sum()
    (surrogate + term).backward()
    got = logits.grad.clone()
    logits.grad = None
    logprobs_from_logits(logits, torch.zeros(2, 3, dtype=torch.long)).sum().backward()
    assert torch.equal(got, logits.grad)


def test_logprobs_from_bf16_logits_are_float32():
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0]]], dtype=torch.bfloat16)
    lp = logprobs_from_logits(logits, torch.tensor([[3]]))
    assert lp.dtype == torch.float32
    assert lp.item() == pytest.approx(-math.log(4), abs=1e-6)  # uniform over 4
