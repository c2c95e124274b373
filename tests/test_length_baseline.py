"""The length-only scorers eval-rm reports next to an RM's accuracy (fgrlhf.algorithms.rm_losses.length_baseline)."""

import pytest
import torch

from fgrlhf.algorithms.rm_losses import length_baseline


def test_length_baseline_hand_computed():
    chosen = torch.tensor([10, 5, 7, 3])
    rejected = torch.tensor([4, 9, 7, 2])
    # longer chosen wins pairs 0 and 3, loses pair 1, ties pair 2: (1 + 0 + ½ + 1) / 4 = 0.625
    result = length_baseline(chosen, rejected)
    assert result["longer_wins"] == pytest.approx(0.625) and result["shorter_wins"] == pytest.approx(0.375)
    # untied pairs 0, 1, 3: longer wins 2 of 3
    assert result["longer_wins_untied"] == pytest.approx(2 / 3)
    assert result["shorter_wins_untied"] == pytest.approx(1 / 3)
    assert result["n"] == 4 and result["tied"] == 1


def test_all_tied_pairs_score_chance_and_have_no_untied_accuracy():
    result = length_baseline(torch.tensor([3, 3]), torch.tensor([3, 3]))
    assert result["longer_wins"] == result["shorter_wins"] == 0.5
    assert result["longer_wins_untied"] is None and result["shorter_wins_untied"] is None
