"""``ppo.async_rollout``: batch k+1 is generated while the learners train on batch k. Every batch after the
first is exactly one update stale (the version comes from the rollout actor that sampled it), the PPO ratio
uses the sampler's log-probs, the metrics keep the synchronous loop's keys, and --resume regenerates the
batch that was in flight."""

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import crashed_copy, read_metrics

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


def _config(*overrides):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    return load_config(PPOTrainConfig, CONFIG, ["rollout.max_new_tokens=8", *overrides])


def test_async_rollout_is_off_by_default_and_typed():
    assert _config().ppo.async_rollout is False
    assert _config("ppo.async_rollout=true").ppo.async_rollout is True
    with pytest.raises(ValueError, match="async_rollout"):
        _config("ppo.async_rollout=sometimes")


def test_policy_rank_keeps_the_samplers_logprobs_as_its_old_logprobs(monkeypatch):
    """Given the batch's old log-probs, a rank keeps its rows (trimmed to its shard's longest response)
    rather than computing its own: no model is needed, so none is built here."""
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.workers.learner_worker import PolicyLearner

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the actor's setting, not this process's
    rank = PolicyLearner(1, 2, DeepSpeedConfig(), ModelConfig(name="tiny"))
    prompts = [[1, 2], [3], [4, 5], [6]]
    responses = [[7, 8, 9], [7], [8, 9], [9]]  # rank 1's rows: 2 and 3, longest response 2
    old = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    kept = rank.evaluate(prompts, responses, old)
    assert torch.equal(kept, old[2:, :2])
    assert rank.prompt_ids == prompts[2:] and rank.response_ids == responses[2:]
    assert rank.old is kept  # what train() puts in the ratio's denominator


@pytest.mark.slow
def test_hf_engine_behaviour_logprobs_are_the_sampling_distribution(tokenizer):
    """At temperature 1 and top_p 1 the engine samples token t from softmax(logits of the prefix): its
    batched, padded log-probs of what it sampled must equal that, computed one prefix at a time."""
    from fgrlhf.config import ModelConfig
    from fgrlhf.workers.rollout_worker import HFEngine

    engine = HFEngine(ModelConfig(name="tiny", seed=0), device="cpu", logprobs_micro_batch_size=2)
    prompts = [tokenizer(text)["input_ids"] for text in ("Hello there", "Write a haiku about the sea.", "2+2=")]
    responses = engine.generate(prompts, 6, 1.0, 1.0, seed=3)
    got = engine.logprobs(prompts, responses)
    assert got.shape == (3, max(len(r) for r in responses))
    with torch.no_grad():
        for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
            want = [
                torch.log_softmax(engine.model(torch.tensor([prompt + response[:t]])).logits[0, -1].float(), -1)[token]
                for t, token in enumerate(response)
            ]
            assert torch.allclose(got[row, : len(response)], torch.stack(want), atol=1e-5)
            assert torch.all(got[row, len(response) :] == 0)


def _keys(record: dict) -> tuple[set, set]:
    return set(record), set(record["phase_seconds"]) - {"checkpoint"}


@pytest.mark.slow
def test_async_rollout_is_one_step_stale_trains_and_resumes(ray_session, tmp_path):
    from fgrlhf.runtime.run_dir import latest_checkpoint, open_run
    from fgrlhf.trainers.ppo.config import PPO_RUN
    from fgrlhf.trainers.ppo.trainer import PPOTrainer, train

    sync = tmp_path / "sync"
    train(_config("steps=1", "save_every=0"), sync)
    cfg = _config("steps=4", "save_every=2", "ppo.async_rollout=true")
    run = tmp_path / "async"
    trainer = PPOTrainer(cfg, open_run(run, PPO_RUN, cfg))
    trainer.run()
    assert trainer.pending is None  # the last step launched no generation

    (want,), got = read_metrics(sync), read_metrics(run)
    assert want["rollout_staleness"] == 0
    # Batch k+1 was sampled by the rollout actor before the push of step k's update reached it.
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert [r["rollout_staleness"] for r in got] == [0, 1, 1, 1]
    for record in got:
        assert _keys(record) == _keys(want)
        assert all(math.isfinite(v) for v in record.values() if isinstance(v, float)), record
        assert record["rollout_tokens_per_s"] > 0
    # Steps 1 and 2 are sampled by the initial policy, the reference: the sampler's log-probs agree with it.
    assert got[0]["kl_mean"] == pytest.approx(0.0, abs=1e-5)
    assert got[1]["kl_k1_seq_mean"] == pytest.approx(0.0, abs=1e-5)
    assert (run / "final" / "config.json").is_file()

    # A crash after step 3: the step-2 checkpoint has the policy after 2 updates; the batch of step 3 that
    # was in flight is not in it, so the resumed run samples it again with those weights (staleness 0).
    crashed = crashed_copy(run, tmp_path / "crashed")
    assert latest_checkpoint(crashed).step == 2
    train(cfg, crashed, resume=True)
    resumed = read_metrics(crashed)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert [r["rollout_staleness"] for r in resumed] == [0, 1, 0, 1]
    assert all(math.isfinite(r["policy_loss"]) and math.isfinite(r["value_loss"]) for r in resumed)
    assert (crashed / "final" / "config.json").is_file()


def test_async_launches_no_batch_after_the_last_step_or_a_gold_stop(tmp_path):
    """The next batch is launched after the gold phase only if a step follows: never after the last step,
    nor after one whose gold meets stop_at_gold, so a run never ends with a generation in flight."""
    from fgrlhf.runtime.run_dir import open_run
    from fgrlhf.trainers.ppo.batch import RolloutBatch
    from fgrlhf.trainers.ppo.config import PPO_RUN
    from fgrlhf.trainers.ppo.trainer import PPOTrainer

    cfg = _config(
        "steps=3",
        "ppo.async_rollout=true",
        "gold_reward=tests.test_ppo_e2e:gold_length",
        "stop_at_gold.target=5",
        "stop_at_gold.window=2",
    )
    trainer = PPOTrainer(cfg, open_run(tmp_path, PPO_RUN, cfg))

    def batch(step, gold):
        return RolloutBatch(step, [0, 1], [[1], [2]], gold=gold)

    assert trainer._continues(batch(0, [9.0, 9.0]))  # a full window is needed to stop
    trainer.golds = [9.0]
    assert not trainer._continues(batch(1, [1.0, 1.0]))  # (9 + 1) / 2 reaches 5
    assert trainer._continues(batch(1, [1.0, 0.0]))  # (9 + 0.5) / 2 does not
    trainer.golds = [1.0, 1.0]
    assert not trainer._continues(batch(2, [1.0, 1.0]))  # the last step
