"""--resume continues at the checkpointed step with the same data order and reproduces the uninterrupted run;
a used --out is refused, a finished run is not redone, and a longer run continues it."""

import json
from pathlib import Path

import pytest

from fgrlhf.trainers.ppo.inputs import batch_indices
from tests.helpers import crashed_copy, read_metrics

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


def test_batch_order_depends_only_on_seed_and_step():
    first = [batch_indices(10, 4, step, seed=3) for step in range(5)]
    assert first == [batch_indices(10, 4, step, seed=3) for step in range(5)]
    # Each pass over the data is a permutation: steps 0-1 and half of 2 cover all 10 prompts once.
    assert sorted(first[0] + first[1] + first[2][:2]) == list(range(10))
    assert first != [batch_indices(10, 4, step, seed=4) for step in range(5)]


@pytest.mark.slow
def test_resume_continues_at_same_step_and_data(ray_session, tmp_path, capsys):
    from fgrlhf.cli import main as fgrlhf
    from fgrlhf.config import load_config
    from fgrlhf.runtime.run_dir import latest_checkpoint
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import train

    cfg = load_config(PPOTrainConfig, CONFIG, ["steps=4", "save_every=2", "rollout.max_new_tokens=8"])
    full = tmp_path / "full"
    train(cfg, full)
    # Simulate a crash after step 3: keep only the step-2 checkpoint and metrics up to step 3, status running.
    crashed = crashed_copy(full, tmp_path / "crashed")
    assert latest_checkpoint(crashed).step == 2

    train(cfg, crashed, resume=True)
    want, got = read_metrics(full), read_metrics(crashed)
    assert [r["step"] for r in got] == [1, 2, 3, 4]  # step 3 was redone, not duplicated
    for a, b in zip(want[2:], got[2:]):
        # Same prompts, same sampling seeds and the restored policy/critic/optimizer give the same step.
        for key in ("reward_mean", "kl_mean", "response_len_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    state = json.loads((crashed / "checkpoints" / "step_4" / "state.json").read_text())
    assert state["step"] == 4 and state["data_position"] == 4 * cfg.ppo.rollout_batch_size

    # The reported splice: a second run into the finished run's --out used to truncate its metrics and keep
    # its checkpoints, and a later --resume continued behind them (steps 1, 2, 7, 8). Now it is refused
    # before Ray, --resume with the same settings is a no-op, and a longer --resume continues the run.
    args = ["ppo", "--config", str(CONFIG), "--out", str(full), "save_every=2", "rollout.max_new_tokens=8"]
    assert fgrlhf([*args, "steps=2"]) == 2
    assert f"{full} already holds a ppo run (finished); pass --resume" in capsys.readouterr().err
    assert fgrlhf([*args, "steps=4", "--resume"]) == 0
    assert read_metrics(full) == want
    assert fgrlhf(["ppo", "steps=5", "--resume", *args[1:]]) == 0  # overrides before --resume work too
    assert [r["step"] for r in read_metrics(full)] == [1, 2, 3, 4, 5] and read_metrics(full)[:4] == want
    assert sorted(p.name for p in (full / "checkpoints").iterdir()) == ["step_4", "step_5"]
    (resume,) = [json.loads(line) for line in (full / "resumes.jsonl").read_text().splitlines()]
    assert resume["status_before"] == "finished" and resume["changes"] == {"steps": [4, 5]}
