"""The paper-table benchmarks (benchmarks/rm_accuracy.py: Table 2, benchmarks/training_hours.py: Table 3):
time-to-target bookkeeping on hand-made curves, and a --quick smoke run of both scripts on the synthetic
env sharing one work dir (the second reuses the first's data and fine-grained RM, as documented)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.training_hours import (
    auto_window,
    calibrated_target,
    eta_minutes,
    noise_rule,
    oracle_rule,
    ratio,
    smoothed_noise,
    steps_to_best,
    summarise_variant,
    time_to_target,
)
from fgrlhf.algorithms.intervals import censored_ratio, open_ends_as_null, sign_test_interval

ROOT = Path(__file__).resolve().parents[1]


def _records(gold: list[float], seconds: float = 2.0) -> list[dict]:
    return [
        {
            "step": i + 1,
            "gold_reward_mean": g,
            "step_seconds": seconds,
            "kl_k1_seq_mean": 0.1 * i,
            "response_len_mean": 20.0 + i,
        }
        for i, g in enumerate(gold)
    ]


def test_time_to_target_uses_the_trailing_moving_average():
    # Step 2 alone exceeds the target, but the 2-step average first does at step 5: (0.5 + 0.7) / 2.
    hit = time_to_target(_records([0.1, 0.6, 0.2, 0.5, 0.7, 0.9]), target=0.55, window=2)
    assert hit["reached"] and hit["steps"] == 5 and hit["seconds"] == pytest.approx(10.0)
    assert hit["curve"]["gold_ma"][:2] == [None, pytest.approx(0.35)]
    assert hit["initial_gold"] == 0.1


def test_a_run_that_never_reaches_the_target_is_censored_at_its_last_step():
    miss = time_to_target(_records([0.1, 0.2, 0.3]), target=0.9, window=2)
    assert not miss["reached"] and miss["steps"] == 3 and miss["seconds"] == pytest.approx(6.0)
    # where it ended: means over the last window (steps 2 and 3)
    assert miss["final_gold_ma"] == pytest.approx(0.25) and miss["final_kl"] == pytest.approx(0.15)
    assert miss["final_response_len"] == pytest.approx(21.5)


def test_sign_test_interval_on_five_and_ten_paired_values():
    # n = 5: k = 2 would cover 1 - 2·(1 + 5)/32 = 62.5 %, so k = 1: [min, max], coverage 1 - 2/32 = 93.75 %.
    five = [1.2, 0.5, 2.0, 0.8, 1.0]
    interval = sign_test_interval(five, five)
    assert (interval["low"], interval["high"], interval["k"]) == (0.5, 2.0, 1)
    assert interval["coverage"] == pytest.approx(0.9375)
    # n = 10: k = 2 covers 1 - 2·(1 + 10)/1024 = 97.85 % ≥ 95 %, k = 3 only 89.06 %: [x_(2), x_(9)].
    ten = [float(v) for v in range(1, 11)]
    interval = sign_test_interval(ten, ten)
    assert (interval["low"], interval["high"], interval["k"]) == (2.0, 9.0, 2)
    assert interval["coverage"] == pytest.approx(1 - 22 / 1024)
    with pytest.raises(ValueError, match="paired"):
        sign_test_interval([1.0], [1.0, 2.0])


def test_censored_runs_turn_per_seed_ratios_into_bounds_that_widen_the_interval():
    assert censored_ratio(10, True, 10, True) == (1.0, 1.0, 1.0)
    assert censored_ratio(20, False, 10, True) == (2.0, 2.0, math.inf)  # numerator ≥ 20: ratio ≥ 2
    assert censored_ratio(10, True, 20, False) == (0.5, 0.0, 0.5)  # denominator ≥ 20: ratio ≤ 0.5
    assert censored_ratio(20, False, 20, False) == (1.0, 0.0, math.inf)  # both censored: nothing known
    # one seed censored on the numerator: the interval's upper end opens, the lower end is the plain minimum
    lows, highs = [0.5, 0.8, 1.0, 1.2, 2.0], [0.5, 0.8, 1.0, 1.2, math.inf]
    interval = sign_test_interval(lows, highs)
    assert (interval["low"], interval["high"]) == (0.5, math.inf)
    assert open_ends_as_null([interval["low"], interval["high"]]) == [0.5, None]  # JSON has no infinity
    assert open_ends_as_null([0.0, 2.0]) == [None, 2.0]


def test_steps_to_best_is_the_first_step_at_the_runs_own_best_moving_average():
    # 2-step means: -, 0.2, 0.4, 0.45, 0.5, 0.4: the best is at step 5, never censored.
    best = steps_to_best(_records([0.1, 0.3, 0.5, 0.4, 0.6, 0.2]), window=2)
    assert best == {"steps_to_best": 5, "seconds_to_best": pytest.approx(10.0), "best_gold_ma": pytest.approx(0.5)}
    # a tie keeps the first step that reached the best
    assert steps_to_best(_records([0.2, 0.4, 0.2, 0.4]), window=2)["steps_to_best"] == 2
    with pytest.raises(ValueError, match="window"):
        steps_to_best(_records([0.1]), window=2)


def test_determinability_rule_names_the_failing_figure():
    assert noise_rule(0.01, margin=0.045) is None  # 0.01 < 0.015
    assert noise_rule(0.02, margin=0.045) == (
        "predicted sd of the smoothed gold 0.0200 ≥ margin / 3 = 0.0150 (margin 0.0450); raise the batch or --window"
    )
    assert oracle_rule({0: True, 1: True}, 0.4, 24) is None
    assert oracle_rule({0: True, 1: False, 2: False}, 0.4, 24) == (
        "oracle_sequence seeds [1, 2] never reached the target 0.4000 in 24 steps"
    )


def test_the_default_window_is_the_smallest_that_meets_the_noise_rule():
    # The balanced env's first five-seed attempt: sd 0.234, batch 32, margin 0.0533 (margin / 3 = 0.0178).
    # Window 5: 0.234 / √160 = 0.0185, too noisy; 6: 0.234 / √192 = 0.0169, quiet enough.
    assert auto_window(0.234, batch=32, margin=0.0533, start=5, limit=8) == 6
    assert auto_window(0.10, batch=32, margin=0.0533, start=5, limit=8) == 5  # the start already meets it
    # none up to the limit does: the limit, and the rule then stops the run with its figures
    assert auto_window(0.50, batch=32, margin=0.0533, start=5, limit=8) == 8
    assert noise_rule(smoothed_noise(0.50, 32, 8), 0.0533) is not None
    assert auto_window(0.50, batch=8, margin=0.05, start=2, limit=1) == 2  # a limit below the start: the start


def test_eta_adds_steps_start_up_and_rms():
    # 2 runs × (10 steps × 5 s + 40 s) + 1 RM × 60 s = 240 s
    assert eta_minutes(2, 10, 5.0, 1, rm_seconds=60.0) == pytest.approx(4.0)


def test_target_rule_and_noise_arithmetic():
    assert calibrated_target(0.30, 0.50, 0.5) == pytest.approx(0.40)
    assert smoothed_noise(0.24, batch=32, window=5) == pytest.approx(0.24 / math.sqrt(160))


def test_censored_medians_are_flagged_and_ratios_become_bounds():
    reached = [{"reached": True, "steps": s, "seconds": 2.0 * s, "final_gold_ma": 0.1 * s} for s in (4, 6, 8)]
    censored = [{"reached": False, "steps": 10, "seconds": 20.0, "final_gold_ma": 0.2}] * 2 + [reached[0]]
    fast, slow = summarise_variant(reached), summarise_variant(censored)
    assert fast["median_steps"] == 6 and not fast["median_is_lower_bound"]
    assert (fast["min_seconds"], fast["max_seconds"]) == (8.0, 16.0)
    assert fast["median_final_gold_ma"] == pytest.approx(0.6) and slow["median_final_gold_ma"] == pytest.approx(0.2)
    assert slow["median_steps"] == 10 and slow["median_is_lower_bound"] and slow["reached"] == 1
    assert ratio(fast, fast, "steps") == (1.0, "exact")
    value, note = ratio(fast, slow, "steps")  # token reached, sequence censored: an upper bound
    assert value == pytest.approx(0.6) and note.startswith("upper bound")
    assert ratio(slow, fast, "steps")[1].startswith("lower bound")
    assert ratio(slow, slow, "seconds") == (None, "undetermined: both medians censored")


def test_a_work_dir_refuses_edits_from_other_rules(tmp_path):
    from benchmarks.common import SIZES, prepare_data

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "edit_rules.txt").write_text("edit-rules-synthetic-delete.yaml sha256:0123456789abcdef\n")
    with pytest.raises(SystemExit, match=r"holds edits made with edit-rules-synthetic-delete\.yaml"):
        prepare_data("synthetic", tmp_path, SIZES[("synthetic", True)])
    assert not (tmp_path / "data" / "round_0").exists()  # refused before generating anything


def _run(script: str, *args: object) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick", *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return proc.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("bench")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


@pytest.mark.slow
def test_rm_accuracy_quick(workdir):
    out = workdir / "rm_accuracy.json"
    stdout = _run("rm_accuracy.py", "--workdir", workdir, "--json", out)
    result = json.loads(out.read_text())
    assert result["data"]["heldout_pairs"] > 0
    for variant in ("finegrained", "finegrained_eq3", "original"):
        acc = result[f"accuracy_{variant}"]
        assert 0.0 <= acc["ci_low"] <= acc["accuracy"] <= acc["ci_high"] <= 1.0
        assert acc["n"] == result["data"]["heldout_pairs"]
        assert set(acc["by_eval_set"]) == {"heldout_gold", "heldout_edits"}
        assert acc["by_eval_set"]["heldout_edits"]["n"] == result["data"]["heldout_edit_pairs"]
        assert acc["rm_train_wall_seconds"] > 0 and acc["rm_train_loop_seconds"] > 0
        assert f"| {variant} (" in stdout
    # Eq. 4 trains only on the pairs the rule editor changed; Eq. 3 on every pair.
    assert result["accuracy_finegrained"]["rm_data_records"] == result["data"]["edit_statuses"]["edited"]
    assert result["accuracy_finegrained_eq3"]["rm_data_records"] == result["data"]["edit_statuses"]["edited"]
    assert result["accuracy_original"]["rm_data_records"] == result["data"]["pairs"]
    # Length-only scorers on the same pairs, in the same table; the global annotator's fixes by fault.
    for name, baseline in result["length_baselines"].items():
        assert baseline["n"] == result["accuracy_original"]["by_eval_set"][name]["n"]
        assert baseline["longer_wins"] + baseline["shorter_wins"] == pytest.approx(1.0)
    assert "| longer wins (length only" in stdout and "| shorter wins (length only" in stdout
    assert "edit-rules-synthetic-global.yaml" in result["data"]["edit_rules"]
    fixes = result["data"]["edit_fixes"]
    assert fixes and all(f["fixed"] + f["rejected"] > 0 for f in fixes.values()) and "| fault |" in stdout
    assert Path(result["plot"]).stat().st_size > 0


@pytest.mark.slow
def test_training_hours_quick(workdir):
    out = workdir / "training_hours.json"
    stdout = _run("training_hours.py", "--workdir", workdir, "--json", out, "--variants", "sequence", "token")
    result = json.loads(out.read_text())
    assert 0.0 <= result["initial_gold"] <= 1.0 and result["initial_samples"] == 16
    # The target rule: halfway from the initial gold to the calibration (oracle_sequence, seed 100) plateau.
    cal = result["calibration"]
    assert cal["seed"] == 100 and len(cal["gold"]) == cal["steps"] == result["max_steps"]
    assert cal["plateau"] == pytest.approx(sum(cal["gold"][-cal["plateau_steps"] :]) / cal["plateau_steps"])
    assert result["target"] == pytest.approx((result["initial_gold"] + cal["plateau"]) / 2)
    assert result["noise"]["determined"] == (
        result["noise"]["smoothed_gold_sd_predicted"] < result["noise"]["limit_margin_third"]
    )
    assert result["budget"]["worst_case_steps"] == 2 * result["max_steps"]
    assert result["kl"]["estimator"] == "k1_nonneg"
    # Eq. 3 on edits by default (Eq. 4 collapses on edits that shorten): rm_accuracy's RM of that name.
    assert result["finegrained_loss"] == "eq3" and result["variant_rm"]["token"] == "token-finegrained_eq3"
    assert set(result["rm_training"]) == {"sequence-original", "token-finegrained_eq3"}
    assert all(t["wall_seconds"] > 0 for t in result["rm_training"].values())
    for variant in ("sequence", "token"):
        assert 1 <= result[f"median_steps_{variant}"] <= result["max_steps"]
        assert _finite(result[f"median_seconds_{variant}"]) and result[f"median_seconds_{variant}"] > 0
        (run,) = result["runs"][variant]
        # every run goes the whole budget (steps to its own best needs the full curve)
        assert len(run["curve"]["gold"]) == result["max_steps"] and not run["stopped_at_gold"]
        assert 1 <= run["steps_to_best"] <= result["max_steps"]
        assert all(0.0 <= g <= 1.0 for g in run["curve"]["gold"])
        assert f"| {variant} |" in stdout
        for key in ("table1", "table1_sampled"):  # n: one preference per eval prompt (sampled: their mean)
            table1 = result[key][variant]
            assert 0.0 <= table1["win_rate"] <= 100.0 and table1["n"] == 8 and _finite(table1["stderr"])
    assert result["table1"]["initial"]["n"] == result["table1_sampled"]["initial"]["n"] == 8
    assert result["eval_samples_per_prompt"] == 2
    # The sampled answers are judged per sample and averaged per prompt: halves, quarters or whole wins.
    sampled = json.loads((Path(workdir) / "winrate" / "initial-n8-t24-sampled2.json").read_text())
    assert sampled["samples_per_prompt"] == 2 and len(sampled["preferences"]) == 8
    assert all(p in (1.0, 1.25, 1.5, 1.75, 2.0) for p in sampled["preferences"])
    assert "2 answers per prompt sampled" in stdout
    for name in ("wallclock", "steps"):
        key = f"ratio_{name}_token_vs_sequence"
        value, note = result[key], result[f"ratio_{name}_note"]
        assert (value is None) == note.startswith("undetermined") and result[f"{key}_note"] == note
        assert value is None or (_finite(value) and value > 0)
        assert (result[f"{key}_ci"] is None) == (value is None)
        assert set(result[f"{key}_censored"]) == {"token", "sequence"}
        assert len(result[f"{key}_per_seed"]) == 1
    key = "ratio_steps_to_best_token_vs_sequence"
    (per_seed,) = result[f"{key}_per_seed"]
    assert result[key] == pytest.approx(per_seed) and result[f"{key}_interval"] == [per_seed, per_seed]
    assert "sign-test" in result["interval_method"] and f"- {key}" in stdout
    assert "ratio_steps_oracle_token_vs_oracle_sequence" not in result  # those arms were not run
    assert Path(result["plot"]).stat().st_size > 0
