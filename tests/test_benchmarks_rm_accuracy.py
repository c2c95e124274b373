"""benchmarks/rm_accuracy.py's seeds: five by default (issue 21's protocol), one under --quick."""

import re

import pytest

from benchmarks import rm_accuracy


def test_help_gives_the_five_default_seeds(capsys):
    with pytest.raises(SystemExit) as exit_info:
        rm_accuracy.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width
    assert re.search(r"--seeds SEEDS \[SEEDS \.\.\.\]\s+RM training seeds \(default 0 1 2 3 4; --quick: 0\)", text)


def test_seeds_default_to_five_and_quick_to_one():
    assert rm_accuracy.parse_args([]).seeds == [0, 1, 2, 3, 4]
    assert rm_accuracy.parse_args(["--quick"]).seeds == [0]
    assert rm_accuracy.parse_args(["--quick", "--seeds", "3", "4"]).seeds == [3, 4]
    assert rm_accuracy.parse_args(["--seeds", "7"]).seeds == [7]
