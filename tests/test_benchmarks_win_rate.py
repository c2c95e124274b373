"""benchmarks/win_rate.py --quick with tiny policies on the synthetic env (gold judge): table, JSON, plot."""

import json

import pytest

from benchmarks import win_rate
from fgrlhf.algorithms.winrate import win_rate as win_rate_formula

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_win_rate_benchmark_quick(tmp_path, capsys):
    out, report, png = tmp_path / "out", tmp_path / "wr.json", tmp_path / "wr.png"
    code = win_rate.main(
        [
            "--policy",
            "random=tiny",
            "--policy",
            "random2=tiny",
            "--env",
            "synthetic",
            "--quick",
            "--n",
            "3",
            "--out",
            str(out),
            "--json",
            str(report),
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    result = json.loads(report.read_text())
    assert [row["policy"] for row in result["policies"]] == ["random", "random2"]
    assert result["settings"]["n"] == 3 and result["settings"]["max_new_tokens"] == win_rate.QUICK["max_new_tokens"]
    for row in result["policies"]:
        items = [json.loads(line) for line in (out / row["policy"] / "outputs.jsonl").read_text().splitlines()]
        # The reported rate is the formula over the verdicts written per instruction.
        assert row["win_rate"] == pytest.approx(win_rate_formula([i["preference"] for i in items])["win_rate"])
    # Same greedy model twice: identical outputs, identical verdicts.
    assert result["policies"][0]["win_rate"] == result["policies"][1]["win_rate"]
    table = capsys.readouterr().out
    assert "| random |" in table and "FG token-level PPO | 51.6 | 1.8" in table
    assert png.stat().st_size > 0


def test_win_rate_benchmark_rejects_bad_policy_spec(capsys):
    with pytest.raises(SystemExit):
        win_rate.main(["--policy", "no-equals-sign", "--env", "synthetic", "--quick"])
    assert "expected NAME=PATH" in capsys.readouterr().err


def test_win_rate_benchmark_names_a_missing_checkpoint(tmp_path, capsys):
    code = win_rate.main(["--policy", f"gone={tmp_path / 'missing'}", "--env", "synthetic", "--quick"])
    assert code == 2 and "policy gone" in capsys.readouterr().err
