"""benchmarks/cpu_breakdown.py: CPU series arithmetic (interpolation, per-method attribution, the step and
mean breakdowns) on hand-built series, and the sampler's step marks."""

import os
import time

import pytest

from benchmarks import cpu_breakdown as cb


def test_cpu_at_interpolates_and_starts_at_zero_at_process_start():
    series = [(10.0, 1.0), (12.0, 3.0)]
    assert cb.cpu_at(series, 11.0) == pytest.approx(2.0)
    assert cb.cpu_at(series, 9.0) == 1.0  # before the first sample, no start time: flat
    assert cb.cpu_at(series, 9.0, created=8.0) == pytest.approx(0.5)  # 0 at the start, 1 at the first sample
    assert cb.cpu_at(series, 7.0, created=8.0) == 0.0
    assert cb.cpu_at(series, 13.0) == 3.0  # after the last sample (an exited process): its last value
    assert cb.cpu_at([], 1.0) == 0.0
    assert cb.cpu_between(series, 10.5, 11.5) == pytest.approx(1.0)


def test_method_cpu_clips_to_the_window_and_sums_repeated_calls():
    series = [(0.0, 0.0), (10.0, 5.0)]  # half a core busy throughout
    intervals = [("A.f", 1.0, 2.0), ("A.g", 2.5, 4.0), ("A.f", 5.0, 6.0), ("A.h", 8.0, 9.0)]
    out = cb.method_cpu(series, intervals, 0.0, 5.5)
    assert set(out) == {"A.f", "A.g"}  # A.h lies outside the window
    assert out["A.f"] == pytest.approx((1.5, 0.75))  # 1 s + the first 0.5 s of the second call
    assert out["A.g"] == pytest.approx((1.5, 0.75))


def _example_series():
    # driver pid 1 (its sampler thread: SAMPLER), actor pid 2, Ray's raylet pid 3, an idle worker pid 4 and a
    # compiler pid 6 run by the actor through a shell pid 5; samples at t = 0 and t = 4: rates (CPU s per s)
    # 0.5, 1.0, 0.25, 0.125, 0.01, 0.5; the sampler 0.05.
    rates = {1: 0.5, cb.SAMPLER: 0.05, 2: 1.0, 3: 0.25, 4: 0.125, 5: 0.01, 6: 0.5}
    return {pid: [(0.0, 0.0), (4.0, 4 * rate)] for pid, rate in rates.items()}


def test_step_breakdown_splits_processes_and_subtracts_the_sampler():
    actor = cb.Actor(
        "a1", "LearnerWorker", 2, [("LearnerWorker.train", 1.0, 2.0), ("LearnerWorker.evaluate", 2.0, 2.5)]
    )
    parents = {2: 1, 3: 1, 4: 3, 5: 2, 6: 5}
    labels = {3: "raylet", 4: "ray::IDLE", 5: "sh", 6: "cc1"}
    step = cb.step_breakdown(_example_series(), {}, labels, [actor], 1, 0.0, 4.0, parents=parents)
    (row,) = step["actors"]
    assert row["children_cpu_s"] == pytest.approx(2.04)  # the shell and the compiler below it
    assert row["cpu_s"] == pytest.approx(4.0 + 2.04)
    assert row["methods"]["LearnerWorker.train"] == pytest.approx({"wall_s": 1.0, "cpu_s": 1.0})
    assert row["methods"]["LearnerWorker.evaluate"] == pytest.approx({"wall_s": 0.5, "cpu_s": 0.5})
    assert row["outside_methods_cpu_s"] == pytest.approx(2.5)
    assert step["driver_cpu_s"] == pytest.approx(2.0 - 0.2)
    assert step["sampler_cpu_s"] == pytest.approx(0.2)
    assert step["ray_processes"] == pytest.approx({"raylet": 1.0, "ray::IDLE": 0.5})
    assert step["total_cpu_s"] == pytest.approx(6.04 + 1.8 + 1.5)


def test_mean_breakdown_rows_add_up_and_phases_collect_their_methods():
    series = _example_series()
    actor = cb.Actor(
        "a1",
        "LearnerWorker",
        2,
        [
            ("LearnerWorker.train", 1.0, 2.0),
            ("LearnerWorker.train", 3.0, 3.5),
            ("LearnerWorker.save_checkpoint", 3.5, 4.0),
        ],
    )
    steps = [
        cb.step_breakdown(series, {}, {3: "raylet", 4: "ray::IDLE"}, [actor], 1, lo, hi, parents={5: 2, 6: 5})
        for lo, hi in ((0.0, 2.0), (2.0, 4.0))
    ]
    phases = [{"rollout": 0.5, "train": 1.0}, {"rollout": 0.7, "train": 0.5}]
    b = cb.mean_breakdown(steps, phases, [2.0, 2.0])
    assert b["total_cpu_s"] == pytest.approx(b["actors_cpu_s"] + b["overhead_cpu_s"])
    assert b["actors_cpu_s"] == pytest.approx(
        b["actor_methods_cpu_s"] + b["actors_outside_methods_cpu_s"] + b["actors_children_cpu_s"]
    )
    assert b["actors_children_cpu_s"] == pytest.approx(1.02)  # (0.01 + 0.5) CPU s per s over 2 s steps
    train, rollout = b["phases"]["train"], b["phases"]["rollout"]
    assert (train["wall_s"], train["actor_cpu_s"]) == pytest.approx((0.75, 0.75))  # (1.0 + 0.5) / 2
    assert train["actor_methods"] == ["LearnerWorker.train"]
    assert (rollout["wall_s"], rollout["actor_cpu_s"]) == pytest.approx((0.6, 0.0)) and not rollout["actor_methods"]
    assert b["other_methods_cpu_s"] == pytest.approx(0.25)  # save_checkpoint: no phase of the step
    assert b["methods"]["LearnerWorker.train"]["phase"] == "train"
    assert b["ray_processes_cpu_s"] == pytest.approx(0.75)
    table = cb.render(b)
    assert "LearnerWorker.train | train | 1 |" in table and "phase rollout: driver only" in table


def test_phase_of_matches_the_method_whatever_the_class():
    assert cb.phase_of("PolicyLearner.evaluate") == "score"
    assert cb.phase_of("RolloutWorker.receive_weights") == "weight_push"
    assert cb.phase_of("LearnerWorker.save_checkpoint") == "other"


def test_process_label():
    assert cb.process_label(["ray::DashboardAgent"], "ray::DashboardAgent") == "ray::DashboardAgent"
    assert (
        cb.process_label(["/venv/bin/python", "-u", "/site/ray/_private/log_monitor.py", "--x"], "python")
        == "log_monitor.py"
    )
    assert cb.process_label(["/site/ray/core/src/ray/raylet/raylet", "--flag"], "raylet") == "raylet"


def test_sampler_marks_each_new_line(tmp_path):
    watched = tmp_path / "metrics.jsonl"
    with cb.TreeSampler(watched, interval=0.02, poll=0.005) as sampler:
        written = []
        for line in ("a\n", "b\nc\n"):  # two lines at once: two step ends at one write time
            time.sleep(0.1)
            with watched.open("a") as handle:
                handle.write(line)
            written.append(watched.stat().st_mtime)
        time.sleep(0.1)
    ends = sampler.mark_times()
    assert ends == [written[0], written[1], written[1]]  # the write times, however late the sampler looked
    series = sampler.series()
    assert os.getpid() in series and cb.SAMPLER in series
    times = [t for t, _ in sampler.samples]
    assert times == sorted(times)
