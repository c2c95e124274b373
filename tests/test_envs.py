import json
import random

import pytest

from fgrlhf.envs import synthetic
from fgrlhf.envs.gold import gold_breakdown
from fgrlhf.envs.preferences import bt_prob, label_pairs, sample_label

PROMPT = "Write about the river, the fish and the bridge."
ON_TOPIC = (
    "The quiet river rests near the old bridge. The small fish waits under the green bridge. "
    "The gentle river moves slowly beside the stone."
)
OFF_TOPIC = (
    "The quiet tower rests near the old lamp. The small train waits under the green street. "
    "The gentle market moves slowly beside the lamp."
)


def with_filler(text: str) -> str:
    return text.replace("rests near", "basically rests near", 1)


def test_gold_is_not_token_additive():
    g = lambda response: synthetic.gold_reward([PROMPT], [response])[0]  # noqa: E731
    # The same local fault (one filler word) costs a relevant response far more than an off-topic one:
    # under a per-token additive reward both deltas would be equal.
    cost_on = g(ON_TOPIC) - g(with_filler(ON_TOPIC))
    cost_off = g(OFF_TOPIC) - g(with_filler(OFF_TOPIC))
    assert cost_off >= 0 and cost_on > 2 * cost_off
    # Coverage is a set: the first mention of a missing prompt word helps, a second one adds nothing.
    no_fish = ON_TOPIC.replace("small fish", "small boat")
    assert g(ON_TOPIC) > g(no_fish)
    assert g(ON_TOPIC + " The fish waits.") <= g(ON_TOPIC)


def test_gold_reads_formatted_prompts_and_penalises_local_faults():
    from fgrlhf.models import load_tokenizer
    from fgrlhf.tokenization import format_prompt

    tok = load_tokenizer("tiny")
    raw = synthetic.gold_reward([PROMPT], [ON_TOPIC])
    assert synthetic.gold_reward([format_prompt(tok, PROMPT)], [ON_TOPIC]) == raw
    assert synthetic.gold_reward([format_prompt(tok, PROMPT, "alpaca")], [ON_TOPIC]) == raw
    first = ON_TOPIC.split(". ")[0] + "."
    b = gold_breakdown(synthetic.GOLD, PROMPT, ON_TOPIC.replace(first, first + " " + first) + " the the")
    assert b.local_faults == 1 and b.repetition > 0 and b.gold < raw[0]


def test_clean_generator_beats_faulty_generator_on_gold():
    prompts = synthetic.split_prompts()[0][:20]

    def mean(rates):
        responses = [r[0] for r in synthetic.sample_responses(prompts, 1, 0, rates)]
        return sum(synthetic.gold_reward(prompts, responses)) / len(prompts)

    assert mean(synthetic.CLEAN) > mean(synthetic.FaultRates()) + 0.2


def test_random_token_text_earns_no_length_credit():
    # Length credit is gated by relevance: well-sized text unrelated to the prompt (a random-init policy's
    # output) earned ~0.4 from the length term alone before; on-topic text keeps its credit.
    from fgrlhf.models import load_tokenizer

    tok = load_tokenizer("tiny")
    rng = random.Random(0)
    prompts = synthetic.split_prompts()[0][:20]
    noise = [tok.decode([rng.randrange(tok.vocab_size) for _ in range(40)], skip_special_tokens=True) for _ in prompts]
    assert max(synthetic.gold_reward(prompts, noise)) < 0.1
    assert synthetic.gold_reward([PROMPT], [OFF_TOPIC]) == [0.0]
    assert synthetic.gold_reward([PROMPT], [ON_TOPIC])[0] > 0.8


def test_bt_labels_deterministic_without_noise_and_large_gap():
    assert bt_prob(1.0, 0.0, 0.0) == 1.0 and bt_prob(0.0, 0.0, 0.0) == 0.5
    assert bt_prob(0.3, 0.1, 0.1) == pytest.approx(1 / (1 + 2.718281828459045**-2))
    rng = random.Random(0)
    assert all(sample_label(1.0, 0.0, 0.05, 0.0, rng) for _ in range(500))
    assert not any(sample_label(0.0, 1.0, 0.05, 0.0, rng) for _ in range(500))


def test_label_noise_and_bt_rates_are_respected():
    n = 4000
    pairs = label_pairs(["p"] * n, [("good", "bad")] * n, [(1.0, 0.0)] * n, 0.0, 0.2, seed=3)
    flipped = sum(not p["gold_agrees"] for p in pairs) / n
    assert abs(flipped - 0.2) < 3 * (0.2 * 0.8 / n) ** 0.5
    assert all(p["chosen"] == "bad" for p in pairs if not p["gold_agrees"])
    # Without noise, BT sampling alone: P(a > b) = sigmoid(0.1 / 0.1) = 0.731.
    pairs = label_pairs(["p"] * n, [("a", "b")] * n, [(0.2, 0.1)] * n, 0.1, 0.0, seed=4)
    p = 1 / (1 + 2.718281828459045**-1)
    assert abs(sum(r["chosen"] == "a" for r in pairs) / n - p) < 3 * (p * (1 - p) / n) ** 0.5


@pytest.mark.slow
def test_synthetic_sft_lowers_heldout_loss(tmp_path):
    result = synthetic.sft_synthetic_policy(tmp_path / "policy", steps=4, seed=0, batch_size=4, log_every=0)
    assert result["heldout_loss_after"] < result["heldout_loss_before"] - 0.5
    assert (tmp_path / "policy" / "config.json").is_file()


def test_env_data_synthetic_writes_labelled_pairs(tmp_path):
    from fgrlhf.envs.env_data import EnvDataConfig, build

    summary = build("synthetic", EnvDataConfig(n_prompts=12, label_noise=0.0, bt_temperature=0.0), tmp_path)
    assert summary["pairs"] == 12 and summary["train_prompts"] + summary["eval_prompts"] == 80
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert all(p["gold_chosen"] >= p["gold_rejected"] for p in pairs)
    evals = [json.loads(line) for line in (tmp_path / "prompts_eval.jsonl").read_text().splitlines()]
    train = {json.loads(line)["prompt"] for line in (tmp_path / "prompts_train.jsonl").read_text().splitlines()}
    assert evals[0]["reference"] and not train & {e["prompt"] for e in evals}
