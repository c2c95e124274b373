"""End-to-end PPO on CPU with tiny models: 2 DeepSpeed ranks each for policy and critic, separate rollout,
reward and reference actors; every reward mode; a rollout/reference actor killed mid-run."""

import math
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import read_metrics

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"
REQUIRED = ("step", "reward_mean", "kl_mean", "entropy", "clip_fraction", "value_loss", "tokens_per_s", "phase_seconds")


def gold_length(prompts, responses):
    """Gold-reward hook for the test: longer responses score higher."""
    assert len(prompts) == len(responses)
    return [float(len(r)) for r in responses]


def _config(*overrides):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    return load_config(PPOTrainConfig, CONFIG, ["steps=2", "save_every=0", "rollout.max_new_tokens=8", *overrides])


@pytest.mark.slow
@pytest.mark.parametrize(
    "mode,rm", [("token", "tiny-token"), ("sequence", "tiny-sequence"), ("fine_grained_sequence", "tiny-token")]
)
def test_ppo_runs_each_reward_mode(ray_session, tmp_path, mode, rm):
    from transformers import AutoModelForCausalLM

    from fgrlhf.trainers.ppo.trainer import train

    overrides = [f"ppo.reward_mode={mode}", f"reward.model={rm}"]
    if mode == "token":
        overrides += ["ppo.kl_estimator=k3", "gold_reward=tests.test_ppo_e2e:gold_length"]
    train(_config(*overrides), tmp_path)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2]
    for record in records:
        for key in REQUIRED:
            assert key in record, key
        assert all(math.isfinite(record[k]) for k in REQUIRED if k != "phase_seconds")
        assert set(record["phase_seconds"]) >= {"rollout", "score", "advantages", "train", "weight_push"}
        assert record["tokens_per_s"] > 0
        assert not [key for key in record if key.startswith("gpu/")]  # a CPU-only run asks no actor for GPU stats
    assert records[0]["kl_mean"] == pytest.approx(0.0, abs=1e-5)  # policy == reference before any update
    assert ("token_reward_mean" in records[0]) == (rm == "tiny-token")
    if mode == "token":
        assert records[-1]["gold_reward_mean"] > 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    assert model.config.num_hidden_layers == 2
    assert (tmp_path / "checkpoints" / "step_2" / "state.json").is_file()
    assert any((tmp_path / "tb").iterdir())


@pytest.mark.slow
def test_run_survives_killed_actors(ray_session, tmp_path):
    from fgrlhf.runtime.run_dir import open_run
    from fgrlhf.trainers.ppo.config import PPO_RUN
    from fgrlhf.trainers.ppo.trainer import PPOTrainer

    ray = ray_session
    cfg = _config("steps=4")
    trainer = PPOTrainer(cfg, open_run(tmp_path, PPO_RUN, cfg))
    killed = []

    def killer():
        # Kill the rollout actor once step 1 is logged, the reference actor once step 2 is.
        for step, role in ((1, "rollout"), (2, "reference")):
            while not (tmp_path / "metrics.jsonl").is_file() or len(read_metrics(tmp_path)) < step:
                time.sleep(0.2)
            actor = trainer.cluster.rollout[0] if role == "rollout" else trainer.cluster.reference
            ray.kill(actor, no_restart=False)
            killed.append(role)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    trainer.run()
    thread.join(timeout=5)
    records = read_metrics(tmp_path)
    assert killed == ["rollout", "reference"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    # The rollout restart is always seen (a restarted generator refuses to sample with initial weights); a
    # reference restart between calls is invisible to the driver and harmless (it is frozen).
    assert records[-1]["actor_restarts"] >= 1
    assert (tmp_path / "final" / "config.json").is_file()
