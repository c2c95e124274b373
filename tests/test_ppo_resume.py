"""--resume continues at the checkpointed step with the same data order and reproduces the uninterrupted run."""

import json
import shutil
from pathlib import Path

import pytest

from fgrlhf.ppo_trainer import batch_indices

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


def test_batch_order_depends_only_on_seed_and_step():
    first = [batch_indices(10, 4, step, seed=3) for step in range(5)]
    assert first == [batch_indices(10, 4, step, seed=3) for step in range(5)]
    # Each pass over the data is a permutation: steps 0-1 and half of 2 cover all 10 prompts once.
    assert sorted(first[0] + first[1] + first[2][:2]) == list(range(10))
    assert first != [batch_indices(10, 4, step, seed=4) for step in range(5)]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_resume_continues_at_same_step_and_data(ray_session, tmp_path):
    from fgrlhf.config import load_config
    from fgrlhf.ppo_trainer import PPOTrainConfig, _latest_checkpoint, train

    cfg = load_config(PPOTrainConfig, CONFIG, ["steps=4", "save_every=2", "rollout.max_new_tokens=8"])
    full = tmp_path / "full"
    train(cfg, full)
    # Simulate a crash after step 3: keep only the step-2 checkpoint and metrics up to step 3.
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed)
    shutil.rmtree(crashed / "checkpoints" / "step_4")
    shutil.rmtree(crashed / "final")
    lines = (crashed / "metrics.jsonl").read_text().splitlines()
    (crashed / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n")
    assert _latest_checkpoint(crashed)[0] == 2

    train(cfg, crashed, resume=True)
    want, got = _metrics(full), _metrics(crashed)
    assert [r["step"] for r in got] == [1, 2, 3, 4]  # step 3 was redone, not duplicated
    for a, b in zip(want[2:], got[2:]):
        # Same prompts, same sampling seeds and the restored policy/critic/optimizer give the same step.
        for key in ("reward_mean", "kl_mean", "response_len_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    state = json.loads((crashed / "checkpoints" / "step_4" / "state.json").read_text())
    assert state["step"] == 4 and state["data_position"] == 4 * cfg.ppo.rollout_batch_size
