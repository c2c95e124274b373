"""Reward-model losses and metrics (arXiv 2406.02756, Eq. 3 / Eq. 4; Bradley–Terry).

Chosen = τ_i, the edited (preferred) response; rejected = τ_j, the original (less preferred) one.
Token tensors are right-padded ``[B, T]`` with a 0/1 ``mask`` of real response tokens.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F


def token_rm_sequence_reward(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """R(τ) = (1/T) Σ_t r_t with T = mask.sum(-1): a token RM read as a sequence score, ``[B]``."""
    mask = mask.to(token_rewards.dtype)
    return (token_rewards * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def token_rm_loss_eq3(
    r_chosen: torch.Tensor, mask_chosen: torch.Tensor, r_rejected: torch.Tensor, mask_rejected: torch.Tensor
) -> torch.Tensor:
    """Eq. 3: −E log σ(R(τ_i) − R(τ_j)), R the per-response mean token reward."""
    margin = token_rm_sequence_reward(r_chosen, mask_chosen) - token_rm_sequence_reward(r_rejected, mask_rejected)
    return -F.logsigmoid(margin).mean()


def _changed_sum_over_length(r: torch.Tensor, mask: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    mask = mask.to(r.dtype)
    return (r * changed.to(r.dtype) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def token_rm_loss_eq4(
    r_chosen: torch.Tensor,
    mask_chosen: torch.Tensor,
    changed_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    mask_rejected: torch.Tensor,
    changed_rejected: torch.Tensor,
) -> torch.Tensor:
    """Eq. 4: −E log σ((1/T_i) Σ_{t∈U1} r^i_t − (1/T_j) Σ_{t∈U1} r^j_t).

    Eq. 3 with the unchanged part U0 dropped (the paper assumes it scores equally on both sides), so only
    changed tokens receive gradient. T stays the full response length (mask.sum), not |U1|. A side with no
    changed tokens (a pure insertion leaves the original's U1 empty) contributes 0 to the margin.
    """
    margin = _changed_sum_over_length(r_chosen, mask_chosen, changed_chosen) - _changed_sum_over_length(
        r_rejected, mask_rejected, changed_rejected
    )
    return -F.logsigmoid(margin).mean()


def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Sequence-RM loss −E log σ(r_c − r_r) (AlpacaFarm's BCE with the label folded into the order)."""
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def pairwise_accuracy(score_chosen: torch.Tensor, score_rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs ranked correctly; a tie counts ½ so a constant scorer sits at chance, not 0."""
    correct = (score_chosen > score_rejected).float() + 0.5 * (score_chosen == score_rejected).float()
    return correct.mean()


def mean_by_position(values: torch.Tensor, mask: torch.Tensor, bin_size: int) -> list[float | None]:
    """Mean of ``values`` over real tokens in position bins [0, bin_size), [bin_size, 2·bin_size), ...
    (None for a bin no row reaches). A token RM whose rewards fall with position rewards brevity."""
    mask = mask.to(values.dtype)
    out = []
    for start in range(0, values.size(-1), bin_size):
        bin_values, bin_mask = values[:, start : start + bin_size], mask[:, start : start + bin_size]
        count = bin_mask.sum()
        out.append(float((bin_values * bin_mask).sum() / count) if count > 0 else None)
    return out


def length_baseline(chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor) -> dict[str, float | None]:
    """Accuracy of scorers that know only length, on the same pairs: "longer wins" (ties ½, the
    complement of "shorter wins") over every pair, and both rules over the pairs whose lengths differ."""
    chosen, rejected = chosen_lengths.double(), rejected_lengths.double()
    untied = chosen != rejected
    longer_untied = float(pairwise_accuracy(chosen[untied], rejected[untied])) if untied.any() else None
    longer = float(pairwise_accuracy(chosen, rejected))
    return {
        "longer_wins": longer,
        "shorter_wins": 1.0 - longer,
        "n": int(chosen.numel()),
        "tied": int((~untied).sum()),
        "longer_wins_untied": longer_untied,
        "shorter_wins_untied": None if longer_untied is None else 1.0 - longer_untied,
    }


def pearson_correlation(x: torch.Tensor, y: torch.Tensor) -> float | None:
    """Pearson correlation of two 1-D tensors; None when either is constant (no correlation is defined)."""
    if x.numel() < 2 or x.std() == 0 or y.std() == 0:
        return None
    return float(torch.corrcoef(torch.stack([x.double(), y.double()]))[0, 1])


def bootstrap_ci(
    correct_per_pair: torch.Tensor | npt.ArrayLike, n_resamples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap (1 − alpha) interval of the mean of per-pair scores (1, 0 or ½ for a tie)."""
    values = np.asarray(
        correct_per_pair.detach().cpu().numpy() if isinstance(correct_per_pair, torch.Tensor) else correct_per_pair,
        dtype=np.float64,
    ).reshape(-1)
    if values.size == 0:
        raise ValueError("bootstrap_ci of zero pairs")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
