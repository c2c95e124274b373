"""Pairwise judges: verdict parsing, both-order combination, seeded positions, and the Claude judge end to end
through the real anthropic SDK against the local fake Messages API, one request at a time and as Message Batches
(faults, retries, cache, re-attachment to an interrupted run's batch, no key on disk)."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fgrlhf.cli import main as cli_main
from fgrlhf.editing.cache import CacheKey, EditCache
from fgrlhf.editing.config import RetryConfig
from fgrlhf.editing.retry import FatalError
from fgrlhf.evaluation.judges import (
    PROMPT_VERSION,
    ClaudeJudge,
    ClaudeJudgeConfig,
    GoldJudge,
    combine_orders,
    model_first,
    parse_verdict,
    unswitch,
)
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
    # one order: (a, b) as given, or switched to (b, a)
    assert unswitch("a", False) == 1.0 and unswitch("b", False) == 2.0
    assert unswitch("a", True) == 2.0 and unswitch("b", True) == 1.0


def test_random_positions_are_seeded_by_the_comparison_and_balanced():
    comparisons = [(f"Question {i}?", f"Reference {i}.", f"Answer {i}, at some length.") for i in range(4000)]
    draws = [model_first(*c) for c in comparisons]
    assert draws == [model_first(*c) for c in comparisons]  # a re-run draws the same orders (and hits the cache)
    assert 0.46 < sum(draws) / len(draws) < 0.54  # a fair coin: 4000 draws land within 4 s.d. of half
    # The coin depends on every part of the comparison, not only the instruction.
    assert len({model_first("Same?", "Reference.", f"Answer {i}.") for i in range(32)}) == 2
    assert len({model_first("Same?", f"Reference {i}.", "Answer.") for i in range(32)}) == 2


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
        positions="both",
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
    assert usage["positions"] == "both" and usage["batch"] is False
    # retry-after honoured: the rate-limited call came back no sooner than the server asked.
    limited = server.requests_for(refs[3] + "\n" + outs[3])
    assert [r.outcome for r in limited] == ["429", "ok"] and limited[1].started - limited[0].started >= 0.3

    # Second run: every call comes from the cache, none reaches the server.
    before = server.count()
    again = ClaudeJudge(cfg)
    assert [v.preference for v in again.compare(instructions, refs, outs)] == [c[2] for c in cases]
    assert server.count() == before and again.counters.requests == 0 and again.from_cache == 2 * len(cases)
    assert_key_absent(tmp_path, KEY)


def _fast(tmp_path, name: str, **settings) -> ClaudeJudgeConfig:
    return ClaudeJudgeConfig(
        model="claude-test",
        cache=str(tmp_path / f"{name}.sqlite"),
        poll_interval_s=0.02,
        retry=RetryConfig(initial_backoff_s=0.01, max_backoff_s=0.05),
        **settings,
    )


def test_random_positions_map_the_verdict_back(tmp_path, server):
    """A judge that always answers "Output (a)" (the fake's [[position-bias]]): with one random order the model
    wins exactly where it was shown first; with both orders every comparison is a draw."""
    instructions = [f"Question {i}?" for i in range(12)]
    refs = [f"Reference answer {i}." for i in range(12)]
    outs = [f"Model answer {i} [[position-bias]]" for i in range(12)]
    firsts = [model_first(*c) for c in zip(instructions, refs, outs)]
    assert 0 < sum(firsts) < len(firsts)  # both positions occur among these comparisons

    judge = ClaudeJudge(_fast(tmp_path, "random"))
    verdicts = judge.compare(instructions, refs, outs)
    assert [v.preference for v in verdicts] == [2.0 if first else 1.0 for first in firsts]
    assert [v.detail for v in verdicts] == [{"model_first": first, "verdict": "a"} for first in firsts]
    assert judge.counters.requests == server.count() == len(instructions)  # one request per comparison
    # The order shown is the drawn one: (model, reference) where the model went first.
    for first, ref, out in zip(firsts, refs, outs):
        shown = out + "\n" + ref if first else ref + "\n" + out
        assert len(server.requests_for(shown)) == 1

    both = ClaudeJudge(_fast(tmp_path, "both", positions="both"))
    assert [v.preference for v in both.compare(instructions, refs, outs)] == [1.5] * len(instructions)
    assert both.counters.requests == 2 * len(instructions)


# (reference = a, model output = b, expected pref): the fake judge prefers the longer output, in either order.
SHORT, LONG = "Red.", "Red, yellow and blue are the primary colours of paint."
FAULTY = [
    (SHORT, LONG, 2.0),
    (LONG, SHORT, 1.0),
    (SHORT, LONG + " [[faults:429]]", 2.0),
    (LONG, SHORT + " [[faults:500]]", 1.0),
    (SHORT, LONG + " [[faults:malformed]]", 2.0),
    (LONG + " [[faults:529,500]]", SHORT, 1.0),
]


def test_batch_judge_matches_plain_and_costs_half(tmp_path, monkeypatch):
    instructions = [f"Question {i}?" for i in range(len(FAULTY))]
    refs, outs = [c[0] for c in FAULTY], [c[1] for c in FAULTY]
    runs = {}
    for batch in (False, True):  # each on its own server: the fault schedules count attempts per item
        with fake_anthropic(monkeypatch, KEY, retry_after_s=0.05) as server:
            judge = ClaudeJudge(_fast(tmp_path, f"batch-{batch}", batch=batch))
            runs[batch] = judge, judge.compare(instructions, refs, outs), server
    (plain, plain_verdicts, plain_server), (batched, batch_verdicts, batch_server) = runs[False], runs[True]
    assert [v.preference for v in batch_verdicts] == [c[2] for c in FAULTY]
    assert batch_verdicts == plain_verdicts  # preferences and details (the positions drawn) alike
    assert plain_server.batches == {} and len(batch_server.batches) >= 2  # the failed items went out again
    assert (
        dict(batched.counters.retries)
        == dict(plain.counters.retries)
        == {
            "rate_limit": 1,
            "server_error": 2,
            "overloaded": 1,
            "malformed": 1,
        }
    )
    assert batched.counters.requests == batch_server.count() == len(FAULTY) + 5
    sent = sum(len(b.requests) for b in batch_server.batches.values())
    assert sent == batched.counters.requests
    # Same prompts, same tokens; the batch API bills them at half the list price.
    p, b = plain.summary(), batched.summary()
    assert (b["input_tokens"], b["output_tokens"]) == (p["input_tokens"], p["output_tokens"])
    assert b["cost_usd"] == pytest.approx(p["cost_usd"] / 2, abs=2e-6) and b["cost_usd"] > 0
    assert (b["batch"], b["positions"], p["batch"]) == (True, "random", False)
    assert {"model", "requests", "from_cache", "retries", "input_tokens", "output_tokens", "cost_usd"} <= set(b)

    # Second call: all cache hits, no batch created or polled.
    with fake_anthropic(monkeypatch, KEY) as server:
        again = ClaudeJudge(_fast(tmp_path, "batch-True", batch=True))
        assert again.compare(instructions, refs, outs) == batch_verdicts
        assert again.counters.requests == 0 and again.from_cache == len(FAULTY)
        assert server.batches == {} and server.count() == 0 and again.summary()["cost_usd"] == 0
    assert_key_absent(tmp_path, KEY)


def test_interrupted_batch_is_picked_up_without_resubmitting(tmp_path, monkeypatch):
    """A run that stops after submitting its batch leaves the batch id in the cache DB; the next run re-attaches
    to it and collects its results (nothing submitted twice); comparisons judged before are cache hits."""
    instructions = [f"Question {i}?" for i in range(5)]
    refs = [f"Reference {i}." for i in range(5)]
    outs = [f"A longer model answer number {i}." for i in range(5)]
    cfg = _fast(tmp_path, "judge", batch=True)
    scope = CacheKey("claude-judge", cfg.model, PROMPT_VERSION, "")
    with fake_anthropic(monkeypatch, KEY, batch_polls=0) as server:
        assert [v.preference for v in ClaudeJudge(cfg).compare(instructions[:2], refs[:2], outs[:2])] == [2.0, 2.0]
        server.batch_polls = 10**6  # the next batch does not end while the run that submits it polls
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(ClaudeJudge(cfg).compare, instructions, refs, outs)
            deadline = time.monotonic() + 60
            while (len(server.batches) < 2 or server.batches["msgbatch_fake0002"].polls < 2) and (
                time.monotonic() < deadline and not first.done()
            ):
                time.sleep(0.01)
            server.api_key = "sk-ant-revoked"  # the next status check fails: the run stops with its batch open
            with pytest.raises(FatalError, match="HTTP 401"):
                first.result(timeout=60)
        assert len(server.batches) == 2 and len(server.batches["msgbatch_fake0002"].requests) == 3  # 2 cached
        reader = EditCache(cfg.cache)
        assert list(reader.open_batches(scope)) == ["msgbatch_fake0002"]
        reader.close()

        server.api_key, server.batch_polls = KEY, 0  # the batch ends at the next status check
        resumed = ClaudeJudge(cfg)
        assert [v.preference for v in resumed.compare(instructions, refs, outs)] == [2.0] * 5
        assert len(server.batches) == 2 and resumed.counters.requests == 0  # re-attached, nothing paid again
        assert resumed.from_cache == 2 and resumed.summary()["output_tokens"] > 0  # the collected results' usage
        assert server.count() == 5  # every comparison reached the model once
        reader = EditCache(cfg.cache)
        assert reader.open_batches(scope) == {} and len(reader) == 5
        reader.close()


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
    assert saved["judge_usage"]["requests"] == server.count() == 2  # 2 instructions, one drawn order each
    for row in rows:
        detail = row["judge_detail"]
        assert detail["model_first"] == model_first(row["prompt"], row["reference"], row["output"])
        assert row["preference"] == unswitch(detail["verdict"], detail["model_first"])
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
    assert server.count("401") <= 1  # one request, no retries


def test_paper_dry_run_judge_estimate_follows_positions_and_batch():
    from fgrlhf.config import load_config
    from fgrlhf.pipelines.paper_config import PaperConfig
    from fgrlhf.pipelines.paper_plan import Sizes, claude_cost

    tiny = Path(__file__).resolve().parents[1] / "configs" / "paper-tiny-cpu.yaml"
    counts = {"rm_pairs": 16, "heldout_pairs": 8, "ppo_prompts": 8, "validation": 4, "eval": 4}
    sizes = Sizes(counts, 300.0, 1000.0, 1000.0, True)
    judge = {}
    for positions, batch in (("random", "false"), ("both", "false"), ("random", "true")):
        overrides = ["eval.judge=claude", f"eval.claude.positions={positions}", f"eval.claude.batch={batch}"]
        judge[positions, batch] = claude_cost(load_config(PaperConfig, str(tiny), overrides), sizes)["judge"]
    random, both, batched = judge["random", "false"], judge["both", "false"], judge["random", "true"]
    # 4 validation x (1 SFT + 3 arms x 1 checkpoint) + 4 eval x (1 SFT + 3 arms) comparisons
    assert (random["requests"], both["requests"], batched["requests"]) == (32, 64, 32)
    assert both["usd"] == pytest.approx(2 * random["usd"]) and batched["usd"] == pytest.approx(random["usd"] / 2)
    assert batched["input_tokens"] == random["input_tokens"] > 0


def test_paper_prejudge_sends_every_checkpoint_in_one_batch(tmp_path, monkeypatch):
    from fgrlhf.data.loading import write_jsonl
    from fgrlhf.pipelines.paper import judge_split, prejudge

    files = []
    for step in (3, 6):  # two checkpoints' answers; only the validation rows are judged here
        rows = [
            {"prompt": f"Question {i}?", "reference": "A short answer.", "output": f"Answer {i} at {step}.", "split": s}
            for i, s in enumerate(["validation", "validation", "eval"])
        ]
        write_jsonl(tmp_path / f"step_{step}.jsonl", rows)
        files.append(tmp_path / f"step_{step}.jsonl")
    with fake_anthropic(monkeypatch, KEY) as server:
        judge = ClaudeJudge(_fast(tmp_path, "prejudge", batch=True))
        prejudge(judge, [*files, tmp_path / "not_written_yet.jsonl"], "validation")
        assert len(server.batches) == 1 and server.count() == 4  # 2 checkpoints × 2 validation prompts
        for path in files:  # the per-checkpoint stages then read the cache
            judge_split(judge, path, "validation", path.with_suffix(".json"))
        assert len(server.batches) == 1 and server.count() == 4 and judge.from_cache == 4
    with fake_anthropic(monkeypatch, KEY) as server:  # an unbatched judge is left to judge per stage
        plain = ClaudeJudge(_fast(tmp_path, "plain"))
        prejudge(plain, files, "validation")
        assert server.count() == 0
