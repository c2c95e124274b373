"""benchmarks/throughput.py --quick: fgrlhf and TRL PPO steps timed side by side on tiny models."""

import argparse
import json
import math

import pytest
import torch

pytest.importorskip("trl", reason="TRL is not installed: pip install 'fgrlhf[bench]' (trl==1.12.0)")
pytest.importorskip("trl.experimental.ppo", reason="this TRL has no PPO trainer; the benchmark needs trl==1.12.0")

from benchmarks import floor, machine_speed, throughput
from fgrlhf.pipelines.stages import StageChanged

pytestmark = pytest.mark.usefixtures("one_thread")


def test_union_seconds_merges_overlaps_and_clips():
    assert throughput.union_seconds([(0, 2), (1, 3), (5, 6)], 0, 10) == 4
    assert throughput.union_seconds([(-1, 1), (9, 12)], 0, 10) == 2
    assert throughput.union_seconds([], 0, 10) == 0


def test_generated_work_counts_tokens_to_the_first_eos_and_the_padded_positions():
    import torch

    eos, pad = 2, 0
    query_responses = torch.tensor(
        [
            [pad, 5, 7, 8, eos, pad, pad],  # ended at its 2nd token; padded after
            [4, 5, 7, eos, 9, eos, 3],  # two EOS: its response ends at the first
            [4, 5, 7, 8, 9, 9, 9],  # no EOS: every position is its own
        ]
    )
    assert throughput.generated_work(query_responses, 3, eos) == (2 + 1 + 4, 3 * 4)
    assert throughput.per_token([6.0, 3.0, 10.0], [3, 3, 2]) == 2.0  # median of 2, 1, 5


def test_warmup_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        throughput.main(["--warmup", "0"])
    assert "--warmup must be at least 1" in capsys.readouterr().err


def test_smollm2_measures_the_shipped_one_rank_learners_unless_told(tmp_path):
    def ranks(*argv: str) -> list[tuple[int, int]]:
        parser = argparse.ArgumentParser()
        throughput.add_arguments(parser)
        args = parser.parse_args(list(argv))
        cfgs = [throughput.load_cfg(args, tmp_path, r) for r in args.learner_ranks or [None]]
        return [(c.policy_learner.world_size, c.critic_learner.world_size) for c in cfgs]

    assert ranks() == [(2, 2)]  # tiny: the config's two ranks, the distributed plumbing under test
    assert ranks("--model", "smollm2") == [(1, 1)]  # configs/ppo-smollm2-cpu.yaml's layout
    assert ranks("--model", "smollm2", "--learner-ranks", "1", "2") == [(1, 1), (2, 2)]
    assert ranks("--model", "smollm2", "critic_learner.world_size=2") == [(1, 2)]


@pytest.mark.slow
def test_throughput_quick(tmp_path, capsys):
    report, png = tmp_path / "tp.json", tmp_path / "tp.png"
    args = ["--quick", "--learner-ranks", "1", "2", "--floor-layouts", "batched", "single"]
    args += ["--json", str(report), "--plot", str(png)]
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
    # The batched floor is the ratios' floor; --floor-layouts added the per-sequence one beside it.
    single = result["floor_single"]
    assert fl["layout"] == "batched" and single["layout"] == "single"
    assert result["ratio_cpu_seconds_fgrlhf_vs_floor_single"] == pytest.approx(
        result["fgrlhf"]["cpu_seconds_per_step"] / single["cpu_seconds_per_step"]
    )
    assert single["counts"][0]["tokens"] == fl["counts"][0]["tokens"]  # same prompts, full-length responses
    fg = result["fgrlhf"]
    # The actor time on the critical path fits inside each step's wall time.
    for step in fg["steps"]:
        assert 0 < step["actor_critical_path_s"] <= step["wall_s"]
    assert fg["weight_push_bytes"] > 1e6  # the tiny Llama's ~6M float32 parameters
    assert len(result["trl"]["step_seconds_all"]) == len(fg["step_seconds_all"]) == 1
    # The work each framework did: tokens it generated, up to each response's EOS (8 at most per response).
    tokens = {name: result[name]["generated_tokens_all"] for name in ("fgrlhf", "trl", "floor")}
    assert all(len(t) == 1 and 0 < t[0] <= 8 * 8 for t in tokens.values()), tokens
    assert tokens["floor"] == [fl["counts"][0]["generated_tokens"]]
    (positions,) = result["trl"]["response_positions_all"]
    assert tokens["trl"][0] <= positions <= 8 * 8 and positions % 8 == 0  # its batch of 8, padded to one width
    for name in ("fgrlhf", "trl", "floor"):
        run = result[name]
        assert run["cpu_seconds_per_generated_token"] == pytest.approx(run["cpu_seconds_all"][0] / tokens[name][0])
    assert result["ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl"] == pytest.approx(
        fg["cpu_seconds_per_generated_token"] / result["trl"]["cpu_seconds_per_generated_token"]
    )
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
    assert "ratio_cpu_seconds_fgrlhf_vs_floor (batched)" in out and "train_policy" in out
    assert "ratio_cpu_seconds_fgrlhf_vs_floor_single (single)" in out and "| floor, single (one process) |" in out
    assert png.stat().st_size > 0
    # The machine's speed was probed before each run and after the last.
    marks = [mark["before"] for mark in result["machine"]["marks"]]
    assert marks == ["trl", "floor_batched", "floor_single", "fgrlhf", "fgrlhf_async", "fgrlhf_2_ranks", "end"]
    assert all(mark["probe_cpu_seconds"] > 0 for mark in result["machine"]["marks"])
    assert len(result["machine"]["pair_slowdown"]) == len(marks)
    assert "Machine speed probe (CPU s, one thread) before trl / floor_batched" in out


def test_machine_watch_probes_and_steal_between_runs(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone = machine_speed.probe_seconds()
        assert torch.get_num_threads() == 2  # one thread while probing only
    finally:
        torch.set_num_threads(threads)
    pair = machine_speed.pair_probe_seconds()
    # Each process of the pair did the lone probe's multiplies: as much CPU at least, give or take the drift.
    assert alone[0] > 0 and alone[1] > 0 and pair[0] > 0.5 * alone[0] and pair[1] > 0.5 * alone[1]
    with pytest.raises(ValueError, match="between two marks; got 1 mark"):
        machine_speed.summarize([{"before": "trl", "probe_cpu_seconds": 1.0, "steal_seconds": 0.0}])
    probes = iter([2.0, 2.2, 1.6, 2.4, 2.4, 2.4])  # alone, then two at once, at each mark
    monkeypatch.setattr(machine_speed, "probe_seconds", lambda: (next(probes), 0.0))
    monkeypatch.setattr(machine_speed, "pair_probe_seconds", lambda: (next(probes), 0.0))
    monkeypatch.setattr(machine_speed, "steal_seconds", iter([5.0, 5.5, 9.5]).__next__)
    watch = machine_speed.MachineWatch()
    for before in ("trl", "fgrlhf", "end"):
        watch.mark(before)
    summary = watch.summary()
    assert summary["probe_cpu_spread"] == pytest.approx(0.5)  # 2.4 over 1.6
    assert summary["pair_slowdown"] == pytest.approx([1.1, 1.5, 1.0])
    assert summary["steal_seconds_during"] == {"trl": 0.5, "fgrlhf": 4.0}
    assert machine_speed.render(summary).endswith(
        "before trl / fgrlhf / end: 2.000 / 1.600 / 2.400; spread 50.0%; two probes at once, CPU each over "
        "alone: 1.10 / 1.50 / 1.00; CPU steal during each run (s): trl 0.5, fgrlhf 4.0"
    )


def test_machine_speed_series(tmp_path, capsys):
    assert machine_speed.main(["--repeat", "1", "--json", str(tmp_path / "probes.json")]) == 0
    (row,) = json.loads((tmp_path / "probes.json").read_text())["probes"]
    assert row["probe_cpu_seconds"] > 0 and row["pair_probe_cpu_seconds"] > 0 and row["pair_probe_wall_seconds"] > 0
    assert f"| {row['time']} | {row['probe_cpu_seconds']:.3f} |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        machine_speed.main(["--repeat", "0"])


def test_learner_minibatches_follow_the_ranks_shards_and_shuffles():
    # 8 rows, 2 ranks, minibatch 4, 2 epochs: 4 optimizer steps, each 2 rows of rank 0's shard (0-3) and 2 of
    # rank 1's (4-7); every epoch trains on every row once.
    steps = floor.learner_minibatches(list(range(8)), 2, 4, 2, seed=3)
    assert len(steps) == 4
    for per_rank in steps:
        assert [len(part) for part in per_rank] == [2, 2]
        assert set(per_rank[0]) <= {0, 1, 2, 3} and set(per_rank[1]) <= {4, 5, 6, 7}
    for epoch in (steps[:2], steps[2:]):
        assert sorted(i for per_rank in epoch for part in per_rank for i in part) == list(range(8))
    assert floor.learner_minibatches(list(range(8)), 2, 4, 2, seed=3) == steps  # seeded like the learners
    # A balanced group order gives each rank its shard of that order, stepped through by the same schedule.
    order = [7, 0, 6, 1, 5, 2, 4, 3]
    balanced = floor.learner_minibatches(order, 2, 4, 2, seed=3)
    assert [[[order[i] for i in part] for part in per_rank] for per_rank in steps] == balanced


def test_by_length_groups_rows_of_similar_length():
    lengths = [9, 3, 7, 3, 8, 1]
    assert floor.by_length([0, 1, 2, 3, 4, 5], lengths, 2) == [[5, 1], [3, 2], [4, 0]]
    counts = floor.empty_counts()
    floor.count_forward(counts, "reward", [[5, 1], [3, 2], [4, 0]], lengths)
    assert counts["tokens"]["reward"] == 31 and counts["positions"]["reward"] == 2 * (3 + 7 + 9)


def test_counts_that_differ_from_the_step_are_refused():
    ok = floor.empty_counts()
    other = floor.empty_counts()
    other["optimizer_steps"]["critic"] = 4
    floor.check_counts(ok, floor.empty_counts())
    with pytest.raises(RuntimeError, match=r"optimizer_steps.critic': \(0, 4\)"):
        floor.check_counts(ok, other)


def run_floor_cli(tmp_path, layout: str) -> dict:
    report = tmp_path / f"floor-{layout}.json"
    args = ["--steps", "1", "--layout", layout, "--json", str(report), "rollout.max_new_tokens=6"]
    assert floor.main(args) == 0
    return json.loads(report.read_text())


@pytest.mark.slow
def test_floor_batched_and_single_do_the_steps_work(tmp_path, capsys):
    batched = run_floor_cli(tmp_path, "batched")
    out = capsys.readouterr().out
    assert "Floor layout: batched" in out and "| optimizer steps, critic | 4 | 4 |" in out
    single = run_floor_cli(tmp_path, "single")
    for result in (batched, single):
        phases = result["phase_cpu_seconds"]
        assert set(phases) == set(floor.PHASES)
        # One measured step, contiguous phases: they add up to the step.
        assert sum(phases.values()) == pytest.approx(result["cpu_seconds_per_step"])
        assert sum(result["phase_wall_seconds"].values()) == pytest.approx(result["step_seconds"])
        assert phases["generate"] > 0 and phases["train_policy"] > 0 and result["cpu_seconds_per_step"] > 0
        assert len(result["cpu_seconds_all"]) == 1
        (lengths,) = result["response_lengths"]
        assert len(lengths) == 8 and all(1 <= n <= 6 for n in lengths)
        # The step's work (checked against fgrlhf's step on the same batch inside the run, reported here):
        # 2 epochs x 8 rows / minibatch 4 optimizer steps per learner; each row scored once per scoring
        # forward and trained on once per epoch.
        (counts,), (fgrlhf,) = result["counts"], result["fgrlhf_counts"]
        assert counts["generated_tokens"] == fgrlhf["generated_tokens"] == sum(lengths)
        assert counts["optimizer_steps"] == fgrlhf["optimizer_steps"] == {"policy": 4, "critic": 4}
        assert counts["tokens"] == fgrlhf["tokens"]
        scored = counts["tokens"]["reference"]
        assert all(counts["tokens"][p] == scored for p in ("logprobs", "reward", "value"))
        assert counts["tokens"]["train_policy"] == counts["tokens"]["train_critic"] == 2 * scored
        # Length-sorted micro-batches pad no more than fgrlhf's micro-batches in batch order.
        assert all(counts["positions"][p] <= fgrlhf["positions"][p] for p in floor.FORWARDS)
    # The same prompts, and on the random tiny model responses of the full 6 tokens in both layouts.
    assert single["counts"][0]["generated_tokens"] == batched["counts"][0]["generated_tokens"]
    assert single["counts"][0]["tokens"] == batched["counts"][0]["tokens"]
    assert single["counts"][0]["positions"] == single["counts"][0]["tokens"]  # one row at a time: no padding
    assert single["counts"][0]["generate_calls"] == 8 and batched["counts"][0]["generate_calls"] == 1
    assert batched["rows_per_forward"]["train_policy"] == 2 and single["rows_per_forward"]["train_policy"] == 1


# Shares of a step's CPU by phase: fgrlhf's (phase_cpu's names) and the floor's (floor.PHASES).
FGRLHF_SHARES = {"rollout": 0.25, "score": 0.25, "advantages": 0.0, "train": 0.4, "weight_push": 0.05, "rest": 0.05}
FLOOR_SHARES = {"generate": 0.3, "logprobs": 0.05, "reference": 0.05, "reward": 0.05, "value": 0.05}
FLOOR_SHARES |= {"advantages": 0.02, "train_policy": 0.24, "train_critic": 0.24}


def sweep_row(length: int, batch: int, cpu: dict[str, float]) -> dict:
    """A point whose responses averaged half the length (TRL's a quarter), with the phase shares above."""
    tokens = {"fgrlhf": length * batch // 2, "trl": length * batch // 4, "floor": length * batch // 2}
    row = {
        "max_new_tokens": length,
        "rollout_batch_size": batch,
        "date": f"2026-12-07 05:{batch:02d} UTC",
        **{
            name: {
                "step_seconds": seconds / 2,
                "cpu_seconds_per_step": seconds,
                "cpu_seconds_all": [seconds],
                "generated_tokens_all": [tokens[name]],
                "cpu_seconds_per_generated_token": seconds / tokens[name],
            }
            for name, seconds in cpu.items()
        },
        "ratio_cpu_seconds_fgrlhf_vs_trl": cpu["fgrlhf"] / cpu["trl"],
        "ratio_step_time_fgrlhf_vs_trl": cpu["fgrlhf"] / cpu["trl"],
        "ratio_cpu_seconds_fgrlhf_vs_floor": cpu["fgrlhf"] / cpu["floor"],
        "ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl": (cpu["fgrlhf"] / tokens["fgrlhf"])
        / (cpu["trl"] / tokens["trl"]),
    }
    row["trl"]["response_positions_all"] = [length * batch]
    # The probe slowed by a tenth over the point, two at once cost each 20 % more at the first mark and 10 %
    # at the others; the hypervisor stole 2 CPU-s during the floor's run.
    probes = iter([1.0, 1.2, 1.05, 1.155, 1.1, 1.21, 1.1, 1.21])
    steal = iter([10.0, 10.0, 12.0, 12.0])
    watch = machine_speed.MachineWatch(
        probe=lambda: (next(probes), 1.0), pair_probe=lambda: (next(probes), 1.0), steal=lambda: next(steal)
    )
    for before in ("trl", "floor", "fgrlhf", "end"):
        watch.mark(before)
    row["machine"] = watch.summary()
    row["fgrlhf"]["phase_cpu_seconds"] = {name: share * cpu["fgrlhf"] for name, share in FGRLHF_SHARES.items()}
    row["floor"]["phase_cpu_seconds"] = {name: share * cpu["floor"] for name, share in FLOOR_SHARES.items()}
    return row


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
    assert throughput.token_growth(rows) == {"fgrlhf": 4.0, "trl": 4.0, "floor": 4.0}
    rows[0]["trl"]["generated_tokens_all"] = [64]  # (128, 8): TRL's responses a quarter of fgrlhf's
    growths = {"cpu_growth": throughput.cpu_growth(rows), "token_growth": throughput.token_growth(rows)}
    result = {"settings": settings, "sweep": rows, **growths}
    table = throughput.render_sweep(result)
    assert "kept from an earlier run" not in table  # one run's points, minutes apart
    assert "| 128 | 16 | 6.00 | 12.00 | 4.00 | 8.00 | 3.00 | 6.00 | 1.50 | 1.50 | 2.00 |" in table
    assert "per step, largest point over smallest: fgrlhf 4.00x, trl 4.00x, floor 4.00x" in table
    assert "| 128 | 8 | 512 / 64 / 512 | 1024 |" in table
    # Tokens, TRL's padded positions, CPU per token, and each side's CPU by phase (the floor's four scoring
    # forwards under "score", its advantages under "other").
    assert "| 128 | 16 | 1024 / 512 / 1024 | 2048 | 11.7 / 15.6 / 5.9 | 0.75 | 3.0 / 3.0 / 4.8 / 1.2 | " in table
    assert table.count("| 1.8 / 1.2 / 2.9 / 0.1 |") == 1
    # How fast the machine was at each point's marks, in the order its runs went.
    assert (
        "probe CPU s before trl / floor / fgrlhf / after | probe spread | two at once, CPU each over alone | "
        "steal s during trl / floor / fgrlhf |"
    ) in table
    assert "| 64 | 16 | 1.000 / 1.050 / 1.100 / 1.100 | 10.0% | 1.20 / 1.10 / 1.10 / 1.10 | 0.0 / 2.0 / 0.0 |" in table
    throughput.plot_sweep(result, tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_sweep_resumes_at_the_first_point_not_measured(tmp_path, monkeypatch, capsys):
    measured, killed = [], {(6, 8)}

    def timed(name: str):
        def run(cfg, *args) -> dict:
            point = (cfg.rollout.max_new_tokens, cfg.ppo.rollout_batch_size)
            if name == "fgrlhf" and point in killed:
                raise KeyboardInterrupt
            measured.append((name, point))
            cpu, tokens = 3.0 if name == "fgrlhf" else 2.0, point[0] * point[1]
            return {
                "step_seconds": 1.0,
                "step_seconds_all": [1.0],
                "cpu_seconds_per_step": cpu,
                "cpu_seconds_all": [cpu],
                "generated_tokens_all": [tokens],
                "cpu_seconds_per_generated_token": cpu / tokens,
                "response_positions_all": [tokens],
                "phase_cpu_seconds": {phase: cpu / len(floor.PHASES) for phase in floor.PHASES},
                "breakdown": {
                    "total_cpu_s": cpu,
                    "phases": {phase: {"actor_cpu_s": cpu / 4} for phase in ("rollout", "score", "train")},
                },
            }

        return run

    for name, function in (("trl", "run_trl_apart"), ("floor", "run_floor"), ("fgrlhf", "run_fgrlhf")):
        monkeypatch.setattr(throughput, function, timed(name))
    monkeypatch.setattr(machine_speed, "probe_seconds", lambda: (1.0, 1.0))
    monkeypatch.setattr(machine_speed, "pair_probe_seconds", lambda: (1.0, 1.0))
    argv = ["--sweep", "--sweep-lengths", "6", "--sweep-batches", "8", "4", "--workdir", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        throughput.main(argv)
    assert measured == [("trl", (6, 4)), ("floor", (6, 4)), ("fgrlhf", (6, 4)), ("trl", (6, 8)), ("floor", (6, 8))]

    measured.clear()
    killed.clear()
    assert throughput.main([*argv, "--json", str(tmp_path / "sweep.json")]) == 0
    assert measured == [("trl", (6, 8)), ("floor", (6, 8)), ("fgrlhf", (6, 8))]  # (6, 4) was kept
    rows = json.loads((tmp_path / "sweep.json").read_text())["sweep"]
    assert [(row["max_new_tokens"], row["rollout_batch_size"]) for row in rows] == [(6, 4), (6, 8)]
    assert [row["ratio_cpu_seconds_fgrlhf_vs_trl"] for row in rows] == [1.5, 1.5]
    assert [row["ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl"] for row in rows] == [1.5, 1.5]
    assert rows[0]["fgrlhf"]["phase_cpu_seconds"] == {"rollout": 0.75, "score": 0.75, "train": 0.75, "rest": 0.75}
    assert [row["kept_from_earlier_run"] for row in rows] == [True, False]
    assert "1 of 2 points were kept from an earlier run" in capsys.readouterr().out

    with pytest.raises(StageChanged, match=r"sweep/6x4\.json"):  # other settings never reuse the points measured
        throughput.main([*argv, "--trl-threads", "2"])


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
        assert 0 < row[name]["generated_tokens_all"][0] <= 6 * 4, name
    # fgrlhf's CPU by phase adds up to its step's; the floor's are its own phases.
    assert sum(row["fgrlhf"]["phase_cpu_seconds"].values()) == pytest.approx(row["fgrlhf"]["cpu_seconds_per_step"])
    assert row["fgrlhf"]["phase_cpu_seconds"]["train"] > 0
    assert [mark["before"] for mark in row["machine"]["marks"]] == ["trl", "floor", "fgrlhf", "end"]
    assert set(row["floor"]["phase_cpu_seconds"]) == set(floor.PHASES)
    for key in (
        "ratio_cpu_seconds_fgrlhf_vs_trl",
        "ratio_step_time_fgrlhf_vs_trl",
        "ratio_cpu_seconds_fgrlhf_vs_floor",
        "ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl",
    ):
        assert math.isfinite(row[key]) and row[key] > 0, key
    assert result["cpu_growth"] == result["token_growth"] == {"fgrlhf": 1.0, "trl": 1.0, "floor": 1.0}
    out = capsys.readouterr().out
    assert "| 6 | 4 |" in out and "largest point over smallest" in out
