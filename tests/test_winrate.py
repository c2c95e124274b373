import argparse
import json

import pytest

from fgrlhf.algorithms.winrate import preference_from_scores, win_rate


def test_win_rate_formula_with_draws_and_stderr():
    # pref - 1 = [1, 0, 0.5, 1]: mean 0.625; sample variance 0.6875 / 3; stderr = sqrt(0.229167 / 4).
    result = win_rate([2.0, 1.0, 1.5, 2.0])
    assert result["win_rate"] == pytest.approx(62.5)
    assert result["stderr"] == pytest.approx(100 * (0.6875 / 3 / 4) ** 0.5)
    assert (result["n"], result["wins"], result["losses"], result["draws"]) == (4, 2, 1, 1)
    assert win_rate([1.5, 1.5]) == {"win_rate": 50.0, "stderr": 0.0, "n": 2, "wins": 0, "losses": 0, "draws": 2}
    assert win_rate([2.0])["stderr"] == 0.0
    with pytest.raises(ValueError):
        win_rate([0.5])


def test_preference_from_scores_counts_ties_within_epsilon_as_draws():
    assert preference_from_scores(0.80, 0.50) == 2.0
    assert preference_from_scores(0.50, 0.80) == 1.0
    assert preference_from_scores(0.505, 0.50, epsilon=0.01) == 1.5
    assert preference_from_scores(0.52, 0.50, epsilon=0.01) == 2.0


@pytest.mark.slow
def test_gold_judge_end_to_end_with_tiny_model(tmp_path, capsys):
    from fgrlhf.evaluation import winrate_cli

    parser = argparse.ArgumentParser()
    winrate_cli.add_arguments(parser)
    args = parser.parse_args(
        ["--model", "tiny", "--judge", "gold", "--n", "3", "--max-new-tokens", "6", "--out", str(tmp_path)]
    )
    assert winrate_cli.main(args) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    saved = json.loads((tmp_path / "winrate.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "outputs.jsonl").read_text().splitlines()]
    assert printed == saved and saved["n"] == len(rows) == 3
    # The headline number is the formula applied to the per-instruction gold verdicts that were written.
    for row in rows:
        assert row["preference"] == preference_from_scores(row["gold_output"], row["gold_reference"], 0.01)
    assert saved["win_rate"] == pytest.approx(win_rate([r["preference"] for r in rows])["win_rate"])
    assert saved["wins"] + saved["losses"] + saved["draws"] == 3
