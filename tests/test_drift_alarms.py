"""Drift alarms: the repetition rate and the alarm decision by hand, the monitor's once-per-kind WARNING and
metrics record, its resume from metrics.jsonl, and (slow) a run that ``ppo.drift.stop`` ends cleanly."""

import json
import logging
from pathlib import Path

import pytest

from fgrlhf.algorithms.drift import Alarm, drift_alarms, repetition_rate
from tests.helpers import read_metrics

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


def test_repetition_rate_hand_computed():
    # a b a b a: 2-grams ab ba ab ba, two repeat → 0.5; 3-grams aba bab aba, one repeats → 1/3
    assert repetition_rate([[1, 2, 1, 2, 1]], 2) == pytest.approx(0.5)
    assert repetition_rate([[1, 2, 1, 2, 1]], 3) == pytest.approx(1 / 3)
    # pooled over the batch: [1 2 3 4] has 3 distinct 2-grams, [5 5 5] has (5 5) twice → 1 of 5 repeats;
    # a response shorter than n has no n-gram and counts for nothing
    assert repetition_rate([[1, 2, 3, 4], [5, 5, 5], [9]], 2) == pytest.approx(1 / 5)
    assert repetition_rate([[9], []], 2) == 0.0
    with pytest.raises(ValueError, match="n-gram size"):
        repetition_rate([[1]], 0)


THRESHOLDS = {"length_fraction": 0.5, "kl_max": 10.0, "repetition_rise": 0.1}
START = {"start_len": 40.0, "start_repetition": 0.02}


def test_drift_alarms_hand_computed():
    quiet = drift_alarms(7, response_len=25.0, kl=9.9, repetition=0.11, **START, **THRESHOLDS)
    assert quiet == []  # −37.5 %, KL under 10, rise 0.09
    alarms = drift_alarms(8, response_len=13.0, kl=11.0, repetition=0.2, **START, **THRESHOLDS)
    assert alarms == [
        Alarm("length", 8, 13 / 40 - 1, 0.5),  # −67.5 %: shorter counts as much as longer
        Alarm("kl", 8, 11.0, 10.0),
        Alarm("repetition", 8, pytest.approx(0.18), 0.1),
    ]
    assert drift_alarms(9, response_len=61.0, kl=0.0, repetition=0.0, **START, **THRESHOLDS) == [
        Alarm("length", 9, 61 / 40 - 1, 0.5)
    ]


def test_drift_alarms_fire_once_and_can_be_turned_off():
    drifted = {"response_len": 13.0, "kl": 11.0, "repetition": 0.2, **START}
    assert drift_alarms(3, **drifted, **THRESHOLDS, raised={"length", "kl", "repetition"}) == []
    off = {"length_fraction": None, "kl_max": None, "repetition_rise": None}
    assert drift_alarms(3, **drifted, **off) == []
    assert Alarm("kl", 3, 11.0, 10.0).as_record() == {"kind": "kl", "step": 3, "value": 11.0, "threshold": 10.0}


def _record(step, length, kl=0.5, repetition=0.02):
    return {"step": step, "response_len_mean": length, "kl_k1_seq_mean": kl, "repetition_rate": repetition}


def test_monitor_warns_once_per_kind_with_its_step(caplog):
    from fgrlhf.trainers.ppo.config import DriftConfig
    from fgrlhf.trainers.ppo.guards import DriftMonitor

    monitor = DriftMonitor(DriftConfig())
    lengths = [40.0, 35.0, 24.0, 19.0, 13.0]  # the simulation's RM arms: ~40 → ~13 tokens
    with caplog.at_level(logging.WARNING, logger="fgrlhf.trainers.ppo.guards"):
        records = [monitor.check(_record(step, length)) for step, length in enumerate(lengths, start=1)]
    assert records == [[], [], [], [{"kind": "length", "step": 4, "value": 19 / 40 - 1, "threshold": 0.5}], []]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "drift alarm at step 4" in warnings[0]


def test_monitor_resumes_its_start_and_raised_kinds_from_the_metrics():
    from fgrlhf.trainers.ppo.config import DriftConfig
    from fgrlhf.trainers.ppo.guards import DriftMonitor

    history = [
        {**_record(1, 40.0), "alarms": []},
        {**_record(2, 30.0, kl=12.0), "alarms": [{"kind": "kl", "step": 2, "value": 12.0, "threshold": 10.0}]},
    ]
    monitor = DriftMonitor.resume(DriftConfig(), history)
    # KL is still high but was flagged at step 2; the length is measured against step 1's 40 tokens
    assert monitor.check(_record(3, 15.0, kl=12.0)) == [
        {"kind": "length", "step": 3, "value": 15 / 40 - 1, "threshold": 0.5}
    ]


@pytest.mark.slow
def test_drift_stop_ends_the_run_with_a_checkpoint_and_says_why(ray_session, tmp_path, monkeypatch):
    """An alarm at step 2 of 4 under ``ppo.drift.stop``: the run stops after step 2 with its final checkpoint
    and policy, and run.json's result names the alarm. The tiny random policy's drift is not predictable, so
    the length alarm's threshold is tripped by making step 2's start the run's first step at twice its
    length (the monitor's start is what the alarm compares with)."""
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo import guards
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import train

    check = guards.DriftMonitor.check

    def doubled_start(self, record):
        if self.start is None:
            self.start = {**record, "response_len_mean": 2 * record["response_len_mean"] + 1}
        return check(self, record) if record["step"] >= 2 else []

    monkeypatch.setattr(guards.DriftMonitor, "check", doubled_start)
    cfg = load_config(
        PPOTrainConfig,
        CONFIG,
        ["steps=4", "save_every=0", "rollout.max_new_tokens=8", "ppo.drift.stop=true", "ppo.drift.kl_max=null"],
    )
    train(cfg, tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    assert records[0]["alarms"] == [] and [a["kind"] for a in records[1]["alarms"]] == ["length"]
    assert records[1]["stopped_by_drift"] == ["length"]
    assert (tmp_path / "checkpoints" / "step_2" / "state.json").is_file()
    assert (tmp_path / "final").is_dir()
    manifest = json.loads((tmp_path / "run.json").read_text())
    assert manifest["status"] == "finished" and manifest["result"]["stopped_by_drift"] == ["length"]
    assert isinstance(records[0]["repetition_rate"], float) and records[0]["kl_coef"] == cfg.ppo.kl_coef
