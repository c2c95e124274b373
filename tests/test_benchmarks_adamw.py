"""benchmarks/adamw.py on the tiny model: every implementation timed, and all make the same update."""

import json

import pytest

from benchmarks import adamw

pytestmark = pytest.mark.usefixtures("one_thread")


def test_adamw_benchmark_times_each_implementation_and_they_agree(tmp_path, capsys):
    out = tmp_path / "adamw.json"
    assert adamw.main(["--model", "tiny", "--steps", "2", "--rounds", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = result["implementations"]
    assert set(rows) == {"for-loop", "foreach", "fused"}
    assert result["parameters"] > 0 and result["rounds"] == 2
    for row in rows.values():
        assert row["wall_s_per_step"] > 0 and row["cpu_s_per_step"] > 0
        assert row["max_abs_diff_vs_for_loop"] < 1e-6  # the same update, to float rounding
    assert rows["fused"]["cpu_ratio_to_fused"] == 1.0
    assert rows["for-loop"]["max_abs_diff_vs_for_loop"] == 0.0
    assert "| fused |" in capsys.readouterr().out


@pytest.mark.parametrize("flag", ["--steps", "--rounds", "--threads"])
def test_adamw_benchmark_refuses_a_count_below_one(flag, capsys):
    with pytest.raises(SystemExit):
        adamw.main(["--model", "tiny", flag, "0"])
    assert "must be at least 1" in capsys.readouterr().err
