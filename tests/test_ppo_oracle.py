"""Oracle reward modes (the env's gold at EOS, or telescoped over prefixes), the gold early stop, the
critic's value-head initialisation and the AlpacaFarm-style defaults of the PPO configs."""

import json
from pathlib import Path

import pytest
import torch

from fgrlhf.algorithms.ppo_core import compute_gae, compute_rewards, telescoped_rewards
from tests.helpers import t

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- telescoping (pure)
# Prefix scores g(y≤t) for t = 0..4; row 0 has 3 tokens, row 1 has 2 (columns past the end are ignored).
PREFIX = t([0.0, 0.2, 0.5, 0.4, 9.0], [0.0, 0.3, 0.3, 7.0, 7.0])
MASK = t([1, 1, 1, 0], [1, 1, 0, 0])


def test_telescoped_rewards_hand_computed():
    rewards = telescoped_rewards(PREFIX, MASK)
    assert torch.allclose(rewards, t([0.2, 0.3, -0.1, 0.0], [0.3, 0.0, 0.0, 0.0]))
    # Σ r_t = g(y) − g(empty) = the sequence score when the empty response scores 0
    assert torch.allclose(rewards.sum(1), t(0.4, 0.3))


def test_telescoped_rewards_sum_to_the_score_minus_the_empty_response():
    prefix = PREFIX.clone()
    prefix[:, 0] = torch.tensor([0.1, -0.2])
    assert torch.allclose(telescoped_rewards(prefix, MASK).sum(1), t(0.4 - 0.1, 0.3 + 0.2))


def test_telescoped_rewards_needs_the_empty_prefix_column():
    with pytest.raises(ValueError, match="one column more"):
        telescoped_rewards(PREFIX[:, 1:], MASK)


def test_oracle_modes_share_their_counterparts_arithmetic():
    kl = t([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8])
    gold = torch.tensor([0.4, 0.3])
    assert torch.equal(
        compute_rewards("oracle_sequence", kl, MASK, 0.5, sequence_reward=gold),
        compute_rewards("sequence", kl, MASK, 0.5, sequence_reward=gold),
    )
    dense = telescoped_rewards(PREFIX, MASK)
    assert torch.equal(
        compute_rewards("oracle_token", kl, MASK, 0.5, token_rewards=dense),
        compute_rewards("token", kl, MASK, 0.5, token_rewards=dense),
    )
    with pytest.raises(ValueError, match="oracle_token"):
        compute_rewards("oracle_token", kl, MASK, 0.5, sequence_reward=gold)


def test_with_gamma_lambda_one_telescoping_acts_as_a_baseline():
    """Same return as the sequence arm; the advantages differ exactly by g(y<t), a function of the state."""
    gold = PREFIX[torch.arange(2), MASK.sum(1).long()]
    values = t([0.5, -0.1, 0.2, 0.0], [0.05, 0.3, 0.0, 0.0])
    zero_kl = torch.zeros_like(MASK)
    seq = compute_rewards("oracle_sequence", zero_kl, MASK, 0.0, sequence_reward=gold)
    tok = compute_rewards("oracle_token", zero_kl, MASK, 0.0, token_rewards=telescoped_rewards(PREFIX, MASK))
    adv_seq, ret_seq = compute_gae(seq, values, MASK, 1.0, 1.0)
    adv_tok, ret_tok = compute_gae(tok, values, MASK, 1.0, 1.0)
    assert torch.allclose(ret_seq[:, 0], ret_tok[:, 0])  # the return from the first token is the gold
    assert torch.allclose(adv_seq - adv_tok, PREFIX[:, :-1] * MASK, atol=1e-6)  # g(y<t) at every real token
    # With λ < 1 the difference is no longer a function of the state alone.
    adv_seq, _ = compute_gae(seq, values, MASK, 1.0, 0.5)
    adv_tok, _ = compute_gae(tok, values, MASK, 1.0, 0.5)
    assert not torch.allclose(adv_seq - adv_tok, PREFIX[:, :-1] * MASK, atol=1e-3)


# ---------------------------------------------------------------- prefix gold on real text
def test_prefix_gold_scores_telescope_to_the_synthetic_gold():
    from fgrlhf.envs.synthetic import gold_reward
    from fgrlhf.models import load_tokenizer
    from fgrlhf.trainers.ppo.inputs import prefix_gold_scores

    tok = load_tokenizer("tiny")
    prompt = "Write about the river, the fish and the bridge."
    texts = [
        "The quiet fish rests slowly under the old bridge. The bank waits basically near the stone.",
        "The cold owl sleeps.",
    ]
    responses = [tok(x, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for x in texts]
    calls = []

    def counting_gold(prompts, outputs):
        calls.append(len(outputs))
        return gold_reward(prompts, outputs)

    scores = prefix_gold_scores(counting_gold, [prompt, prompt], responses, tok)
    assert calls == [sum(len(r) + 1 for r in responses)]  # every prefix of the batch in one gold call
    assert scores.shape == (2, max(len(r) for r in responses) + 1)
    mask = torch.zeros(2, scores.size(1) - 1)
    for row, r in enumerate(responses):
        mask[row, : len(r)] = 1.0
    rewards = telescoped_rewards(scores, mask)
    full = gold_reward([prompt, prompt], tok.batch_decode(responses, skip_special_tokens=True))
    assert scores[:, 0].tolist() == [0.0, 0.0]  # the empty response has no words: gold 0
    assert torch.allclose(rewards.sum(1), torch.tensor(full), atol=1e-6)
    assert full[0] > 0 and rewards[0, len(responses[0]) - 1] == 0.0  # EOS adds no text, so no reward
    prefix = tok.decode(responses[0][:5], skip_special_tokens=True)
    assert scores[0, 5].item() == pytest.approx(gold_reward([prompt], [prefix])[0])


# ---------------------------------------------------------------- configs
def _load(*overrides, path=ROOT / "configs" / "ppo-synthetic-cpu.yaml"):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    return load_config(PPOTrainConfig, path, list(overrides))


@pytest.mark.parametrize("mode", ["oracle_sequence", "oracle_token"])
def test_oracle_modes_need_a_gold_reward(mode):
    from fgrlhf.config import ConfigError

    assert _load(f"ppo.reward_mode={mode}").ppo.reward_mode == mode  # the config names the gold hook
    with pytest.raises(ConfigError, match=f"{mode} is driven by the gold reward: set gold_reward"):
        _load(f"ppo.reward_mode={mode}", "gold_reward=null")


def test_stop_at_gold_config():
    from fgrlhf.config import ConfigError

    cfg = _load("stop_at_gold.target=0.4", "stop_at_gold.window=5")
    assert (cfg.stop_at_gold.target, cfg.stop_at_gold.window) == (0.4, 5)
    with pytest.raises(ConfigError, match="stop_at_gold needs gold_reward"):
        _load("stop_at_gold.target=0.4", "gold_reward=null")
    with pytest.raises(ConfigError, match="window"):
        _load("stop_at_gold.target=0.4", "stop_at_gold.window=0")


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("ppo-*.yaml")), ids=lambda p: p.name)
def test_ppo_configs_follow_alpacafarm_shaping_and_critic_init(path):
    cfg = _load(path=path)
    assert cfg.ppo.kl_estimator == "k1_nonneg" and cfg.critic_value_head_init == "zero"


def test_gold_target_reached_uses_the_trailing_window():
    from fgrlhf.trainers.ppo.config import StopAtGold
    from fgrlhf.trainers.ppo.trainer import gold_target_reached

    stop = StopAtGold(target=0.5, window=2)
    assert not gold_target_reached([0.9], stop)  # no full window yet
    assert not gold_target_reached([0.9, 0.0], stop)  # mean 0.45
    assert gold_target_reached([0.0, 0.4, 0.6], stop)  # last two: 0.5
    assert not gold_target_reached([0.9, 0.9], None)


# ---------------------------------------------------------------- critic initialisation
def test_critic_starts_from_the_rm_backbone_with_a_zero_value_head(tmp_path):
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_tokenizer
    from fgrlhf.reward.model import build_reward_model
    from fgrlhf.workers.learner_worker import load_critic

    rm = build_reward_model("sequence", ModelConfig(name="tiny"))
    with torch.no_grad():
        rm.head.bias.fill_(0.7)
    rm.save_pretrained(tmp_path, load_tokenizer("tiny"))
    rm_state = rm.state_dict()

    critic = load_critic(tmp_path, "zero")
    assert torch.count_nonzero(critic.head.weight) == 0 and torch.count_nonzero(critic.head.bias) == 0
    for name, value in critic.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(value, rm_state[name]), name
    ids = torch.tensor([[5, 6, 7]])
    assert torch.count_nonzero(critic(ids, torch.ones_like(ids))) == 0  # V(s_t) = 0 everywhere at the start

    kept = load_critic(tmp_path, "reward_head")
    assert torch.equal(kept.head.weight, rm_state["head.weight"]) and kept.head.bias.item() == pytest.approx(0.7)


# ---------------------------------------------------------------- end to end
def gold_words(prompts, responses):
    """Gold hook for the e2e test: word count / 10 (grows with every prefix, so telescoping is visible)."""
    return [len(r.split()) / 10 for r in responses]


@pytest.mark.slow
def test_oracle_token_run_stops_at_the_gold_target(ray_session, tmp_path):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import train

    cfg = load_config(
        PPOTrainConfig,
        ROOT / "configs" / "ppo-tiny-cpu.yaml",
        [
            "steps=4",
            "save_every=0",
            "rollout.max_new_tokens=8",
            "reward.model=tiny-sequence",
            "ppo.reward_mode=oracle_token",
            "gold_reward=tests.test_ppo_oracle:gold_words",
            "stop_at_gold.target=-1.0",
            "stop_at_gold.window=2",
        ],
    )
    train(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # stopped once 2 steps were in the window
    assert [r["stopped_at_gold"] for r in records] == [False, True]
    assert all(r["reward_mean"] == pytest.approx(r["gold_reward_mean"]) for r in records)
    assert "token_reward_mean" not in records[0]  # the RM is not asked in oracle modes
    assert (tmp_path / "checkpoints" / "step_2" / "state.json").is_file() and (tmp_path / "final").is_dir()
