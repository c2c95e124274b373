import math

import pytest
import torch

from fgrlhf.algorithms.figa_loss import figa_loss, figa_token_weights, token_cross_entropy
from tests.helpers import t

# revised side: 3 real tokens + padding; positive = inserted/substituted (+ EOS)
CE_REV = t([0.2, 1.0, 0.5, 3.0])
POS_REV = t([0, 1, 1, 1])  # the flag on padding must be ignored
MASK_REV = t([1, 1, 1, 0])
# original side: 4 real tokens; negative = deleted/substituted
CE_ORIG = t([0.3, 0.9, 0.6, 0.1])
NEG_ORIG = t([1, 1, 1, 0])
MASK_ORIG = t([1, 1, 1, 1])


def test_weights_default_official_config():
    w_rev, w_orig = figa_token_weights(CE_REV, POS_REV, MASK_REV, CE_ORIG, NEG_ORIG, MASK_ORIG)
    # revised: α = 1 on positives, γ = 0 on the unchanged token 0, 0 on padding
    assert w_rev.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    # original: −β = −0.5 on negatives with CE ≤ 0.6: token 0 (0.3) yes, token 1 (0.9) gated off,
    # token 2 (0.6) yes (boundary is inclusive), token 3 is not negative
    assert w_orig.tolist() == [[-0.5, 0.0, -0.5, 0.0]]


def test_gamma_applies_to_unchanged_revised_tokens_only():
    w_rev, w_orig = figa_token_weights(
        CE_REV, POS_REV, MASK_REV, CE_ORIG, NEG_ORIG, MASK_ORIG, alpha=2.0, beta=1.0, gamma=0.25
    )
    assert w_rev.tolist() == [[0.25, 2.0, 2.0, 0.0]]
    assert w_orig.tolist() == [[-1.0, 0.0, -1.0, 0.0]]  # original's unchanged token 3 stays 0


def test_figa_loss_hand_computed():
    loss = figa_loss(CE_REV, POS_REV, MASK_REV, CE_ORIG, NEG_ORIG, MASK_ORIG)
    # Σ w·CE = 1·1.0 + 1·0.5 − 0.5·0.3 − 0.5·0.6 = 1.5 − 0.15 − 0.3 = 1.05; 4 non-zero weights
    assert loss.item() == pytest.approx(1.05 / 4, abs=1e-6)
    loss_g = figa_loss(CE_REV, POS_REV, MASK_REV, CE_ORIG, NEG_ORIG, MASK_ORIG, gamma=0.25)
    # + 0.25·0.2 = 0.05 → 1.1 over 5 weighted tokens
    assert loss_g.item() == pytest.approx(1.1 / 5, abs=1e-6)


def test_gate_blocks_gradient_and_weights_are_constants():
    ce_rev = CE_REV.clone().requires_grad_()
    ce_orig = CE_ORIG.clone().requires_grad_()
    w_rev, w_orig = figa_token_weights(ce_rev, POS_REV, MASK_REV, ce_orig, NEG_ORIG, MASK_ORIG)
    assert not w_rev.requires_grad and not w_orig.requires_grad
    figa_loss(ce_rev, POS_REV, MASK_REV, ce_orig, NEG_ORIG, MASK_ORIG).backward()
    # dL/dCE_t = w_t / 4: the unconfident negative token 1 gets exactly 0
    assert ce_orig.grad.tolist() == [[-0.125, 0.0, -0.125, 0.0]]
    assert ce_rev.grad.tolist() == [[0.0, 0.25, 0.25, 0.0]]


def test_sft_special_case_is_mean_revised_ce():
    # α = γ = 1, β = 0 → every real revised token weighs 1, the original side 0:
    # (0.2 + 1.0 + 0.5) / 3 = 0.56667, whatever the positive flags
    loss = figa_loss(CE_REV, t([1, 0, 1, 0]), MASK_REV, CE_ORIG, NEG_ORIG, MASK_ORIG, alpha=1.0, beta=0.0, gamma=1.0)
    assert loss.item() == pytest.approx(1.7 / 3, abs=1e-6)


def test_zero_weighted_tokens_gives_zero_loss_with_graph():
    ce = t([0.4, 0.4]).requires_grad_()
    zeros = torch.zeros(1, 2)
    loss = figa_loss(ce, zeros, torch.ones(1, 2), ce, zeros, torch.ones(1, 2))  # nothing changed, γ = 0
    assert loss.item() == 0.0
    loss.backward()
    assert ce.grad.tolist() == [[0.0, 0.0]]


def test_infinite_ce_on_unweighted_token_does_not_poison_loss():
    ce_orig = t([0.3, math.inf])  # token 1 is not negative: weight 0
    loss = figa_loss(t([1.0]), t([1]), t([1]), ce_orig, t([1, 0]), t([1, 1]))
    # (1·1.0 − 0.5·0.3) / 2 = 0.425
    assert loss.item() == pytest.approx(0.425, abs=1e-6)


def test_token_cross_entropy_hand_computed():
    ln2 = math.log(2)
    logits = torch.tensor([[[0.0, 0.0, ln2], [0.0, 0.0, 0.0]]])  # softmax [¼, ¼, ½] and [⅓, ⅓, ⅓]
    ce = token_cross_entropy(logits, torch.tensor([[0, 2]]))
    # −ln ¼ = ln 4, −ln ⅓ = ln 3
    assert torch.allclose(ce, t([math.log(4), math.log(3)]), atol=1e-6)
