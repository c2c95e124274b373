"""benchmarks/throughput.py --quick: fgrlhf and TRL PPO steps timed side by side on tiny models."""

import json
import math
import statistics

import pytest

pytest.importorskip("trl", reason="TRL is not installed: pip install 'fgrlhf[bench]' (trl==1.12.0)")
pytest.importorskip("trl.experimental.ppo", reason="this TRL has no PPO trainer; the benchmark needs trl==1.12.0")

from benchmarks import floor, throughput

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
    # The compute floor ran in the same invocation, on the same measured steps.
    fl = result["floor"]
    assert result["ratio_cpu_seconds_fgrlhf_vs_floor"] == pytest.approx(
        result["fgrlhf"]["cpu_seconds_per_step"] / fl["cpu_seconds_per_step"]
    )
    assert math.isfinite(result["ratio_cpu_seconds_trl_vs_floor"]) and result["ratio_cpu_seconds_trl_vs_floor"] > 0
    assert len(fl["step_seconds_all"]) == 1
    assert sum(fl["phase_cpu_seconds"].values()) == pytest.approx(fl["cpu_seconds_per_step"])
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
    assert "ratio_cpu_seconds_fgrlhf_vs_floor" in out and "train_policy" in out
    assert png.stat().st_size > 0


@pytest.mark.slow
def test_floor_phases_add_up(tmp_path, capsys):
    report = tmp_path / "floor.json"
    assert floor.main(["--steps", "2", "--json", str(report), "rollout.max_new_tokens=6"]) == 0
    result = json.loads(report.read_text())
    phases = result["phase_cpu_seconds"]
    assert set(phases) == set(floor.PHASES)
    # Contiguous phases: their means add up to the mean step, within the measured steps' spread.
    assert sum(phases.values()) == pytest.approx(result["cpu_seconds_per_step_mean"])
    assert sum(result["phase_wall_seconds"].values()) == pytest.approx(statistics.fmean(result["step_seconds_all"]))
    assert phases["generate"] > 0 and phases["train_policy"] > 0 and result["cpu_seconds_per_step"] > 0
    assert len(result["cpu_seconds_all"]) == 2
    # Nothing padded: each response at its own length, at most max_new_tokens, the batch of 8 every step.
    assert all(len(step) == 8 and all(1 <= n <= 6 for n in step) for step in result["response_lengths"])
    assert "train_critic" in capsys.readouterr().out


def sweep_row(length: int, batch: int, cpu: dict[str, float]) -> dict:
    return {
        "max_new_tokens": length,
        "rollout_batch_size": batch,
        **{name: {"step_seconds": seconds / 2, "cpu_seconds_per_step": seconds} for name, seconds in cpu.items()},
        "ratio_cpu_seconds_fgrlhf_vs_trl": cpu["fgrlhf"] / cpu["trl"],
        "ratio_step_time_fgrlhf_vs_trl": cpu["fgrlhf"] / cpu["trl"],
        "ratio_cpu_seconds_fgrlhf_vs_floor": cpu["fgrlhf"] / cpu["floor"],
    }


def test_sweep_growth_table_and_plot(tmp_path):
    rows = [
        sweep_row(128, 8, {"fgrlhf": 6.0, "trl": 5.0, "floor": 3.0}),
        sweep_row(64, 16, {"fgrlhf": 5.0, "trl": 4.0, "floor": 2.5}),
        sweep_row(64, 8, {"fgrlhf": 3.0, "trl": 2.0, "floor": 1.5}),
        sweep_row(128, 16, {"fgrlhf": 12.0, "trl": 8.0, "floor": 6.0}),
    ]
    # Largest point (128 tokens, batch 16) over the smallest (64, 8), whatever the rows' order.
    assert throughput.cpu_growth(rows) == {"fgrlhf": 4.0, "trl": 4.0, "floor": 4.0}
    settings = {"policy": "tiny", "step_batch_size": 4, "epochs": 2, "steps": 1}
    result = {"settings": settings, "sweep": rows, "cpu_growth": throughput.cpu_growth(rows)}
    table = throughput.render_sweep(result)
    assert "| 128 | 16 | 6.00 | 12.00 | 4.00 | 8.00 | 3.00 | 6.00 | 1.50 | 1.50 | 2.00 |" in table
    assert "fgrlhf 4.00x, trl 4.00x, floor 4.00x" in table
    throughput.plot_sweep(result, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


@pytest.mark.slow
def test_throughput_sweep_quick(tmp_path, capsys):
    # One point keeps it short (each point starts fgrlhf's Ray cluster); the growth over points is tested above.
    report = tmp_path / "sweep.json"
    args = ["--quick", "--sweep", "--sweep-lengths", "6", "--sweep-batches", "4", "--json", str(report)]
    assert throughput.main([*args, "--workdir", str(tmp_path / "w")]) == 0
    result = json.loads(report.read_text())
    (row,) = result["sweep"]
    assert (row["max_new_tokens"], row["rollout_batch_size"]) == (6, 4)
    for name in ("fgrlhf", "trl", "floor"):
        assert row[name]["cpu_seconds_per_step"] > 0 and len(row[name]["step_seconds_all"]) == 1, name
    for key in (
        "ratio_cpu_seconds_fgrlhf_vs_trl",
        "ratio_step_time_fgrlhf_vs_trl",
        "ratio_cpu_seconds_fgrlhf_vs_floor",
    ):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert result["cpu_growth"] == {"fgrlhf": 1.0, "trl": 1.0, "floor": 1.0}
    out = capsys.readouterr().out
    assert "| 6 | 4 |" in out and "largest point over smallest" in out
