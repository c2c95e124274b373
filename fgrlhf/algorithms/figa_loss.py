"""FIGA's weighted token loss (arXiv 2311.04072) with the official code's confidence gate.

Each pair is an original response and its revision. Positive tokens (inserted/substituted tokens of the
revised response, plus its EOS) are learned with weight +α; negative tokens (deleted/substituted tokens of
the original) are pushed down with weight −β, but only where the model already assigns them p ≥ e^−threshold
(CE_t ≤ threshold); unchanged tokens of the revised response get γ. Defaults α=1, β=0.5, γ=0, threshold 0.6.
Tensors are right-padded ``[B, T]`` (the two sides may have different T).
"""

from __future__ import annotations

import torch

from fgrlhf.algorithms.ppo_core import logprobs_from_logits


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE_t = −log p(label_t), ``[B, T]``; labels must be valid ids everywhere (padding is masked later)."""
    return -logprobs_from_logits(logits, labels)


@torch.no_grad()
def figa_token_weights(
    ce_revised: torch.Tensor,
    positive_mask_revised: torch.Tensor,
    mask_revised: torch.Tensor,
    ce_original: torch.Tensor,
    negative_mask_original: torch.Tensor,
    mask_original: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 0.0,
    confidence_threshold: float = 0.6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights ``(w_revised, w_original)``, gradient-free, 0 outside the masks.

    Revised: α on positive tokens, γ on the rest. Original: −β on negative tokens with CE_t ≤ threshold,
    0 elsewhere — γ is deliberately NOT applied to the original's unchanged tokens (they also occur in the
    revised response, so γ there would double-count them; the official code uses 0 for both when γ = 0).
    The gate stops a negative term from driving an already-unlikely token's log-prob toward −∞.
    ``ce_revised`` is unused by the weights; it is taken so both sides read alike.
    """
    del ce_revised
    positive = positive_mask_revised.to(ce_original.dtype)
    w_revised = (alpha * positive + gamma * (1.0 - positive)) * mask_revised.to(ce_original.dtype)
    confident = (ce_original <= confidence_threshold).to(ce_original.dtype)
    w_original = -beta * negative_mask_original.to(ce_original.dtype) * confident * mask_original.to(ce_original.dtype)
    return w_revised, w_original


def figa_loss(
    ce_revised: torch.Tensor,
    positive_mask_revised: torch.Tensor,
    mask_revised: torch.Tensor,
    ce_original: torch.Tensor,
    negative_mask_original: torch.Tensor,
    mask_original: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 0.5,
    gamma: float = 0.0,
    confidence_threshold: float = 0.6,
) -> torch.Tensor:
    """L = Σ_t w_t·CE_t over both sides / #{t : w_t ≠ 0}, one normaliser for the whole batch.

    The negative term lowers log p directly (not an unlikelihood log(1 − p) term). With no weighted token
    the loss is 0 (still attached to the graph). α = γ = 1, β = 0 is plain SFT on the revised responses.
    """
    w_revised, w_original = figa_token_weights(
        ce_revised,
        positive_mask_revised,
        mask_revised,
        ce_original,
        negative_mask_original,
        mask_original,
        alpha=alpha,
        beta=beta,
        gamma=gamma,
        confidence_threshold=confidence_threshold,
    )
    # where, not w·CE: an infinite CE at a zero-weight position (e.g. a -inf logit) must not become NaN.
    total = (
        torch.where(w_revised != 0, w_revised * ce_revised, 0.0).sum()
        + torch.where(w_original != 0, w_original * ce_original, 0.0).sum()
    )
    count = (w_revised != 0).sum() + (w_original != 0).sum()
    return total / count.clamp(min=1)
