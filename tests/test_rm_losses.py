import math

import numpy as np
import pytest
import torch

from fgrlhf.algorithms.rm_losses import (
    bootstrap_ci,
    bradley_terry_loss,
    mean_by_position,
    pairwise_accuracy,
    pearson_correlation,
    token_rm_loss_eq3,
    token_rm_loss_eq4,
    token_rm_sequence_reward,
)


def neg_log_sigmoid(x: float) -> float:
    return math.log1p(math.exp(-x))


def test_sequence_reward_is_mean_over_real_tokens():
    r = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    # row 0: (1 + 2 + 3) / 3 = 2; row 1: 4 / 1 = 4 (padding 99s ignored)
    assert torch.allclose(token_rm_sequence_reward(r, mask), torch.tensor([2.0, 4.0]))


def test_eq3_hand_computed():
    r_c = torch.tensor([[1.0, 3.0, 0.0]])  # R_i = (1 + 3) / 2 = 2
    m_c = torch.tensor([[1, 1, 0]])
    r_r = torch.tensor([[0.0, 1.0, 2.0]])  # R_j = (0 + 1 + 2) / 3 = 1
    m_r = torch.tensor([[1, 1, 1]])
    # −log σ(2 − 1) = log(1 + e^−1) = 0.31326
    assert token_rm_loss_eq3(r_c, m_c, r_r, m_r).item() == pytest.approx(neg_log_sigmoid(1.0), abs=1e-6)


def test_eq3_is_stable_for_large_margins():
    big = torch.tensor([[-1000.0]])
    loss = token_rm_loss_eq3(big, torch.ones(1, 1), -big, torch.ones(1, 1))
    # −log σ(−2000) = 2000 exactly in floating point, not inf
    assert loss.item() == pytest.approx(2000.0)


def test_eq4_hand_computed_and_batch_mean():
    # pair 0: chosen T_i = 4, U1 = {1, 2}: (2 + 4) / 4 = 1.5;
    #         rejected T_j = 3, U1 = {0}:    3 / 3 = 1.0    → margin 0.5
    # pair 1: chosen T_i = 2, U1 = {1}:    2 / 2 = 1.0;
    #         rejected U1 = {} (pure insertion) → 0        → margin 1.0
    r_c = torch.tensor([[9.0, 2.0, 4.0, 9.0], [9.0, 2.0, 0.0, 0.0]])
    m_c = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    u_c = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 0]])
    r_r = torch.tensor([[3.0, 7.0, 7.0], [5.0, 5.0, 0.0]])
    m_r = torch.tensor([[1, 1, 1], [1, 1, 0]])
    u_r = torch.tensor([[1, 0, 0], [0, 0, 0]])
    expected = (neg_log_sigmoid(0.5) + neg_log_sigmoid(1.0)) / 2  # (0.47408 + 0.31326) / 2
    assert token_rm_loss_eq4(r_c, m_c, u_c, r_r, m_r, u_r).item() == pytest.approx(expected, abs=1e-6)


def test_eq4_ignores_changed_flags_outside_mask():
    # a stray "changed" flag on a padding position must not count: U1 = changed ∧ mask
    r_c = torch.tensor([[2.0, 100.0]])
    m_c = torch.tensor([[1, 0]])
    u_c = torch.tensor([[1, 1]])
    r_r = torch.tensor([[0.0]])
    # margin = 2 / 1 − 0 = 2
    loss = token_rm_loss_eq4(r_c, m_c, u_c, r_r, torch.ones(1, 1), torch.zeros(1, 1))
    assert loss.item() == pytest.approx(neg_log_sigmoid(2.0), abs=1e-6)


def test_eq4_gradient_only_on_changed_tokens():
    r_c = torch.tensor([[0.5, -0.2, 0.1]], requires_grad=True)
    r_r = torch.tensor([[0.3, 0.4]], requires_grad=True)
    u_c = torch.tensor([[0, 1, 0]])
    u_r = torch.tensor([[1, 0]])
    loss = token_rm_loss_eq4(r_c, torch.ones(1, 3), u_c, r_r, torch.ones(1, 2), u_r)
    loss.backward()
    # margin m = −0.2/3 − 0.3/2 = −0.21667; dL/dm = −(1 − σ(m)) = −σ(−m)
    s = 1 / (1 + math.exp(-(0.2 / 3 + 0.3 / 2)))
    assert torch.allclose(r_c.grad, torch.tensor([[0.0, -s / 3, 0.0]]), atol=1e-6)
    assert torch.allclose(r_r.grad, torch.tensor([[s / 2, 0.0]]), atol=1e-6)


def test_eq4_equals_eq3_when_unchanged_tokens_score_equal():
    # the paper's assumption: U0 rewards equal on both sides and T_i = T_j → Eq. 4 == Eq. 3
    r_c = torch.tensor([[0.7, 1.5, -0.3]])
    r_r = torch.tensor([[0.7, -1.0, -0.3]])
    mask = torch.ones(1, 3)
    changed = torch.tensor([[0, 1, 0]])
    eq3 = token_rm_loss_eq3(r_c, mask, r_r, mask)
    eq4 = token_rm_loss_eq4(r_c, mask, changed, r_r, mask, changed)
    # both: −log σ((1.5 − (−1.0)) / 3)
    assert eq3.item() == pytest.approx(neg_log_sigmoid(2.5 / 3), abs=1e-6)
    assert eq4.item() == pytest.approx(eq3.item(), abs=1e-6)


def test_bradley_terry_hand_computed():
    # margins 0 and 2: (log 2 + log(1 + e^−2)) / 2 = (0.69315 + 0.12693) / 2
    loss = bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert loss.item() == pytest.approx((math.log(2) + neg_log_sigmoid(2.0)) / 2, abs=1e-6)


def test_pairwise_accuracy_ties_count_half():
    chosen = torch.tensor([2.0, 1.0, 0.0, 5.0])
    rejected = torch.tensor([1.0, 1.0, 3.0, 4.0])
    # correct, tie, wrong, correct → (1 + 0.5 + 0 + 1) / 4 = 0.625
    assert pairwise_accuracy(chosen, rejected).item() == pytest.approx(0.625)


def test_bootstrap_ci_degenerate_and_bracketing():
    assert bootstrap_ci(np.ones(10)) == (1.0, 1.0)  # every resample of all-correct has mean 1
    correct = torch.tensor([1.0] * 30 + [0.0] * 10)  # mean 0.75
    low, high = bootstrap_ci(correct, n_resamples=500, seed=1)
    # binomial se = sqrt(.75·.25/40) = 0.068 → a 95% interval about 0.75 ± 0.13
    assert 0.55 < low < 0.75 < high < 0.95
    assert bootstrap_ci(correct, n_resamples=500, seed=1) == (low, high)  # seeded → reproducible
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))


def test_mean_by_position_hand_computed():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0, 5.0], [10.0, 20.0, 30.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # bins of 2: {1, 2, 10, 20} -> 8.25; {3, 4, 30} -> 37/3; {5} -> 5
    assert mean_by_position(values, mask, 2) == pytest.approx([8.25, 37 / 3, 5.0])
    # a bin no row reaches is None, not 0
    assert mean_by_position(values, torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]), 2) == [
        pytest.approx(13 / 3),
        None,
        None,
    ]


def test_pearson_correlation_hand_computed():
    # x = [1, 2, 3], y = [1, 3, 2]: deviations (-1, 0, 1) and (-1, 1, 0) -> cov 1/2, var 1 each -> 0.5
    assert pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([6.0, 4.0, 2.0])) == pytest.approx(-1.0)
    # a constant side (e.g. every response the same length) has no correlation
    assert pearson_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 5.0, 5.0])) is None
