"""benchmarks/throughput.py --quick: fgrlhf and TRL PPO steps timed side by side on tiny models."""

import json

import pytest

pytest.importorskip("trl", reason="TRL is not installed: pip install 'fgrlhf[bench]' (trl==1.12.0)")
pytest.importorskip("trl.experimental.ppo", reason="this TRL has no PPO trainer; the benchmark needs trl==1.12.0")

from benchmarks import throughput

pytestmark = pytest.mark.usefixtures("one_thread")


def test_union_seconds_merges_overlaps_and_clips():
    assert throughput.union_seconds([(0, 2), (1, 3), (5, 6)], 0, 10) == 4
    assert throughput.union_seconds([(-1, 1), (9, 12)], 0, 10) == 2
    assert throughput.union_seconds([], 0, 10) == 0


def test_warmup_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--warmup", "0"])
    assert "--warmup must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_throughput_quick(tmp_path, capsys):
    report, png = tmp_path / "tp.json", tmp_path / "tp.png"
    args = ["--quick", "--learner-ranks", "1", "2", "--json", str(report), "--plot", str(png)]
    assert throughput.main([*args, "--workdir", str(tmp_path / "w")]) == 0
    result = json.loads(report.read_text())
    for key in (
        "ratio_step_time_fgrlhf_vs_trl",
        "ratio_cpu_seconds_fgrlhf_vs_trl",
        "weight_push_mb_per_s",
        "fgrlhf_step_seconds",
        "trl_step_seconds",
    ):
        assert result[key] > 0, key
    assert result["fgrlhf"]["cpu_seconds_per_step"] > 0 and result["trl"]["cpu_seconds_per_step"] > 0
    assert 0 <= result["ray_overhead_fraction"] < 1
    assert result["ratio_step_time_fgrlhf_vs_trl"] == pytest.approx(
        result["fgrlhf_step_seconds"] / result["trl_step_seconds"]
    )
    fg = result["fgrlhf"]
    # The actor time on the critical path fits inside each step's wall time.
    for step in fg["steps"]:
        assert 0 < step["actor_critical_path_s"] <= step["wall_s"]
    assert fg["weight_push_bytes"] > 1e6  # the tiny Llama's ~6M float32 parameters
    assert len(result["trl"]["step_seconds_all"]) == len(fg["step_seconds_all"]) == 1
    # Where the CPU went: one measured step, so the breakdown's mean is the step's CPU; its parts add up.
    b = result["breakdown"]
    assert b["total_cpu_s"] == pytest.approx(fg["cpu_seconds_per_step"])
    assert b["total_cpu_s"] == pytest.approx(b["actors_cpu_s"] + b["driver_cpu_s"] + b["ray_processes_cpu_s"])
    assert b["phases"]["train"]["actor_cpu_s"] > 0 and b["phases"]["rollout"]["actor_methods"]
    assert b["ray_processes"] and b["sampler_cpu_s"] > 0
    # The same run measured fgrlhf's async loop: its measured step trains on a batch sampled one update back.
    sync, asynchronous = result["fgrlhf"], result["fgrlhf_async"]
    assert not sync["async_rollout"] and asynchronous["async_rollout"]
    assert sync["rollout_staleness"] == [0] and asynchronous["rollout_staleness"] == [1]
    assert result["ratio_step_time_async_vs_sync"] == pytest.approx(asynchronous["step_seconds"] / sync["step_seconds"])
    assert result["ratio_cpu_seconds_async_vs_sync"] > 0
    # --learner-ranks 1 2: the main run has 1 rank per learner, and the sync loop was measured again with 2.
    assert result["settings"]["learner_ranks"] == 1
    by_ranks = result["fgrlhf_by_learner_ranks"]
    assert set(by_ranks) == {"1", "2"} and by_ranks["1"]["step_seconds"] == sync["step_seconds"]
    assert all(r["train_actor_cpu_seconds"] > 0 and len(r["step_seconds_all"]) == 1 for r in by_ranks.values())
    out = capsys.readouterr().out
    assert "ratio_step_time_fgrlhf_vs_trl" in out and "ratio_step_time_async_vs_sync" in out
    assert png.stat().st_size > 0
