"""Pairwise judges: verdict parsing, both-order combination, and the Claude judge end to end through the real
anthropic SDK against the local fake Messages API (faults, retries, cache, no key on disk)."""

import json

import pytest

from fgrlhf.cli import main as cli_main
from fgrlhf.editing.config import RetryConfig
from fgrlhf.evaluation.judges import ClaudeJudge, ClaudeJudgeConfig, GoldJudge, combine_orders, parse_verdict
from tests.helpers import assert_key_absent, fake_anthropic

KEY = "sk-ant-judge-SECRET-456"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def server(monkeypatch):
    with fake_anthropic(monkeypatch, KEY, retry_after_s=0.3) as srv:
        yield srv


def test_parse_verdict_and_combine_orders():
    assert parse_verdict("Output (b)") == "b"
    assert parse_verdict("Output (a) is short but Output (b) is right.\nOutput (b)") == "b"
    assert parse_verdict("Both are fine.") is None
    # first = verdict on (a, b), second = verdict on (b, a)
    assert combine_orders("a", "b") == 1.0  # a wins in both positions
    assert combine_orders("b", "a") == 2.0  # b wins in both positions
    assert combine_orders("a", "a") == 1.5 == combine_orders("b", "b")  # followed the position: draw


def test_gold_judge_uses_the_env_gold_reward():
    from fgrlhf.envs.alpaca_sim import gold_reward

    prompt = "Name three primary colours."
    good = "The three primary colours of paint are red, yellow and blue; mixing them gives the other colours."
    bad = "As an AI language model, I cannot. As an AI language model, I cannot."
    verdicts = GoldJudge("alpaca-sim", epsilon=0.01).compare([prompt, prompt], [good, bad], [bad, good])
    assert [v.preference for v in verdicts] == [1.0, 2.0]
    assert verdicts[0].detail == {"gold_a": gold_reward([prompt], [good])[0], "gold_b": gold_reward([prompt], [bad])[0]}


def test_claude_judge_both_orders_faults_and_cache(tmp_path, server):
    short, long = "Red.", "Red, yellow and blue are the primary colours of paint."
    # (reference = a, model output = b, expected pref); the fake judge prefers the longer output.
    cases = [
        (short, long, 2.0),
        (long, short, 1.0),
        (short, long + " [[position-bias]]", 1.5),  # always "(a)": the two orders disagree
        (short, long + " [[faults:429]]", 2.0),
        (long, short + " [[faults:500]]", 1.0),
        (short, long + " [[faults:malformed]]", 2.0),
    ]
    instructions = [f"Question {i}?" for i in range(len(cases))]
    refs, outs = [c[0] for c in cases], [c[1] for c in cases]
    cfg = ClaudeJudgeConfig(
        model="claude-test",
        concurrency=3,
        cache=str(tmp_path / "judge.sqlite"),
        retry=RetryConfig(initial_backoff_s=0.01, max_backoff_s=0.05),
    )
    judge = ClaudeJudge(cfg)
    verdicts = judge.compare(instructions, refs, outs)
    assert [v.preference for v in verdicts] == [c[2] for c in cases]
    assert verdicts[2].detail == {"order_ab": "a", "order_ba": "a"}
    # Each of the 3 faulty pairs fails once in each order, then succeeds.
    assert dict(judge.counters.retries) == {"rate_limit": 2, "server_error": 2, "malformed": 2}
    assert judge.counters.requests == server.count() == 2 * len(cases) + 6
    usage = judge.summary()
    assert usage["input_tokens"] > 0 and usage["cost_usd"] > 0 and usage["from_cache"] == 0
    # retry-after honoured: the rate-limited call came back no sooner than the server asked.
    limited = server.requests_for(refs[3] + "\n" + outs[3])
    assert [r.outcome for r in limited] == ["429", "ok"] and limited[1].started - limited[0].started >= 0.3

    # Second run: every call comes from the cache, none reaches the server.
    before = server.count()
    again = ClaudeJudge(cfg)
    assert [v.preference for v in again.compare(instructions, refs, outs)] == [c[2] for c in cases]
    assert server.count() == before and again.counters.requests == 0 and again.from_cache == 2 * len(cases)
    assert_key_absent(tmp_path, KEY)


@pytest.mark.slow
def test_winrate_cli_with_claude_judge(tmp_path, server, capsys):
    out = tmp_path / "run"
    code = cli_main(
        [
            "winrate",
            "--model",
            "tiny",
            "--env",
            "synthetic",
            "--judge",
            "claude",
            "--judge-model",
            "claude-test",
            "--judge-cache",
            str(tmp_path / "judge.sqlite"),
            "--n",
            "2",
            "--max-new-tokens",
            "4",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    saved = json.loads((out / "winrate.json").read_text())
    rows = [json.loads(line) for line in (out / "outputs.jsonl").read_text().splitlines()]
    assert saved["judge"] == "claude" and saved["n"] == len(rows) == 2
    assert saved["judge_usage"]["requests"] == server.count() == 4  # 2 instructions x 2 orders
    for row in rows:
        assert row["preference"] == combine_orders(row["judge_detail"]["order_ab"], row["judge_detail"]["order_ba"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == saved
    assert_key_absent(tmp_path, KEY)


@pytest.mark.slow
def test_winrate_cli_bad_key_stops_without_retries(tmp_path, server, monkeypatch, capsys):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    code = cli_main(
        [
            "winrate",
            "--model",
            "tiny",
            "--env",
            "synthetic",
            "--judge",
            "claude",
            "--judge-cache",
            str(tmp_path / "judge.sqlite"),
            "--n",
            "1",
            "--max-new-tokens",
            "2",
        ]
    )
    assert code == 3 and "HTTP 401" in capsys.readouterr().err
    assert server.count("401") <= 2  # one per order at most, no retries
