"""Clear errors (issue 11 §3): bad paths, a missing reward model and bad configs are one line with exit 2
before Ray or any model starts; a UTF-8 BOM is accepted; a batch-size error names the keys without dumping
the config; ``fgrlhf edit`` exits 3 with counts by cause when items fail and stops early when nothing
connects; ``winrate`` refuses an empty reference."""

import json
import socket
import time
from pathlib import Path

import pytest

from fgrlhf.cli import main as cli_main
from fgrlhf.config import ConfigError, load_config
from fgrlhf.data.loading import DataError, load_pairs
from fgrlhf.editing.cache import EditCache
from fgrlhf.editing.config import RuleEditorConfig
from fgrlhf.editing.editors import RuleEditor
from fgrlhf.editing.pipeline import EXIT_INCOMPLETE, exit_status
from fgrlhf.trainers.ppo.config import PPOTrainConfig
from tests.fake_messages_server import FakeMessagesServer
from tests.helpers import edit_command, fake_anthropic, write_pairs

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-ant-test-errors"
FAST = ["retry.initial_backoff_s=0.01", "retry.max_backoff_s=0.05", "tokenizer=tiny"]
BOM = "\ufeff"


pytestmark = pytest.mark.usefixtures("one_thread")


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.strip().splitlines() if line.startswith("error")]
    assert len(lines) == 1, err
    return lines[0]


def _fails_fast(capsys, argv: list[str], message: str) -> None:
    start = time.perf_counter()
    assert cli_main(argv) == 2
    assert message in _one_error_line(capsys)
    assert time.perf_counter() - start < 30  # no Ray, no model (the missing RM took ~50 s inside an actor)


def test_directory_given_as_a_data_file(tmp_path, capsys):
    empty = tmp_path / "somedir"
    empty.mkdir()
    out = str(tmp_path / "o")
    _fails_fast(
        capsys,
        ["edit", "--input", str(empty), "--output", str(tmp_path / "o.jsonl"), "--editor", "rule"],
        "is a directory",
    )
    _fails_fast(capsys, ["inspect-edits", str(empty)], "is a directory")
    _fails_fast(
        capsys,
        ["train-rm", "--data", str(empty), "--out", out, "--config", str(ROOT / "configs/rm-token-tiny-cpu.yaml")],
        "--data",
    )
    rm = tmp_path / "rm"
    rm.mkdir()
    (rm / "config.json").write_text("{}")
    _fails_fast(capsys, ["eval-rm", "--rm", str(rm), "--data", str(empty)], "--data")
    _fails_fast(
        capsys,
        ["ppo", "--config", str(ROOT / "configs/ppo-tiny-cpu.yaml"), "--out", out, f"prompts.path={empty}"],
        "prompts.path",
    )
    _fails_fast(capsys, ["winrate", "--model", "tiny", "--eval-set", str(empty)], "--eval-set")
    with pytest.raises(DataError, match="is a directory"):
        load_pairs(empty)


def test_missing_models_are_found_before_ray(tmp_path, capsys):
    out = str(tmp_path / "o")
    missing = str(tmp_path / "no-such-rm")
    pairs = str(write_pairs(tmp_path / "pairs.jsonl", ["a b"]))
    _fails_fast(capsys, ["eval-rm", "--rm", missing, "--data", pairs], "--rm")
    _fails_fast(
        capsys,
        ["ppo", "--config", str(ROOT / "configs/ppo-tiny-cpu.yaml"), "--out", out, f"reward.model={missing}"],
        f"reward.model: {missing}: no such reward-model directory",
    )
    assert not Path(out).exists()  # refused before the run directory is made
    _fails_fast(
        capsys,
        ["ppo", "--config", str(ROOT / "configs/ppo-tiny-cpu.yaml"), "--out", out, f"policy.name={missing}"],
        "policy.name",
    )
    # The critic is read from a reward-model directory: a policy name such as "tiny" is not one.
    _fails_fast(
        capsys,
        ["ppo", "--config", str(ROOT / "configs/ppo-tiny-cpu.yaml"), "--out", out, "critic_init=tiny"],
        "critic_init: tiny: no such reward-model directory",
    )
    _fails_fast(
        capsys,
        [
            "train-rm",
            "--data",
            pairs,
            "--out",
            out,
            "--model",
            missing,
            "--config",
            str(ROOT / "configs/rm-token-tiny-cpu.yaml"),
        ],
        "model.name",
    )
    _fails_fast(
        capsys,
        ["figa", "--config", str(ROOT / "configs/figa-tiny-cpu.yaml"), "--out", out, f"data.edits_path={missing}"],
        "data.edits_path",
    )
    _fails_fast(
        capsys,
        ["figa-data", "--config", str(ROOT / "configs/figa-data-tiny-cpu.yaml"), "--out", out, f"filter.rm={missing}"],
        "filter.rm",
    )
    _fails_fast(capsys, ["winrate", "--model", missing], "--model")


def test_config_path_that_is_a_directory_or_missing(tmp_path, capsys):
    pairs = str(write_pairs(tmp_path / "pairs.jsonl", ["a b"]))
    edit = ["edit", "--input", pairs, "--output", str(tmp_path / "o.jsonl")]
    _fails_fast(capsys, [*edit, "--config", str(tmp_path)], "is a directory")
    _fails_fast(capsys, [*edit, "--config", str(tmp_path / "nope.yaml")], "config file not found")
    _fails_fast(capsys, [*edit, "--editor", "rule", "--rules", str(tmp_path)], "is a directory")
    _fails_fast(capsys, ["ppo", "--config", str(tmp_path), "--out", str(tmp_path / "o")], "is a directory")


def test_utf8_bom_is_accepted(tmp_path):
    config = tmp_path / "edit.yaml"
    config.write_text(BOM + "editor: rule\nconcurrency: 2\n", encoding="utf-8")
    from fgrlhf.editing.config import EditConfig

    assert load_config(EditConfig, config).concurrency == 2
    rules = tmp_path / "rules.yaml"
    rules.write_text(BOM + "- {name: typo, pattern: 'teh', replacement: 'the'}\n", encoding="utf-8")
    assert RuleEditor(RuleEditorConfig(rules=str(rules))).apply("teh cat") == "the cat"
    assert load_pairs(write_pairs(tmp_path / "pairs.jsonl", ["a", "b"], prefix=BOM))[0]["prompt"] == "Q0?"
    as_json = tmp_path / "pairs.json"
    as_json.write_text(BOM + json.dumps([{"prompt": "p", "chosen": "c", "rejected": "r"}]), encoding="utf-8")
    assert load_pairs(as_json)[0]["rejected"] == "r"


def test_batch_size_error_names_the_keys_not_the_config(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(
            PPOTrainConfig, ROOT / "configs/ppo-tiny-cpu.yaml", ["ppo.rollout_batch_size=6", "ppo.step_batch_size=4"]
        )
    message = str(info.value)
    assert "ppo.rollout_batch_size 6 must be a multiple of ppo.step_batch_size 4" in message
    assert "policy" not in message and "input" not in message and len(message.splitlines()) == 2
    with pytest.raises(ConfigError) as info:  # a field's error names its dotted key
        load_config(PPOTrainConfig, ROOT / "configs/ppo-tiny-cpu.yaml", ["policy_learner.micro_batch_size=0"])
    assert "key 'policy_learner.micro_batch_size'" in str(info.value)


def test_exit_status_from_statuses():
    assert exit_status({"edited": 3, "unchanged": 1, "rejected: edit too large": 2}) == 0
    assert exit_status({"edited": 3, "failed: malformed reply": 1}) == EXIT_INCOMPLETE == 3


def test_edit_exits_3_with_counts_by_cause_when_items_fail(tmp_path, monkeypatch, capsys):
    texts = ["One teh.", "Two teh. [[always-malformed]]", "Three teh. [[faults:400]]", "Four teh."]
    pairs = write_pairs(tmp_path / "pairs.jsonl", texts)
    with fake_anthropic(monkeypatch, KEY):
        code = cli_main(edit_command(pairs, tmp_path / "o.jsonl", "anthropic", *FAST))
    out = capsys.readouterr().out
    assert code == 3
    assert "2 items failed (malformed reply 1, HTTP 400 invalid_request_error 1)" in out
    assert [json.loads(line)["status"] for line in (tmp_path / "o.jsonl").read_text().splitlines()].count("edited") == 2


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_edit_stops_early_when_nothing_connects_and_keeps_cached_items(tmp_path, monkeypatch, capsys):
    texts = [f"Answer {i} has teh typo." for i in range(40)]
    cache = tmp_path / "cache.sqlite"
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with FakeMessagesServer(KEY) as server:  # a first run edits 5 items
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.base_url)
        assert (
            cli_main(
                edit_command(
                    write_pairs(tmp_path / "few.jsonl", texts[:5]),
                    tmp_path / "few-out.jsonl",
                    "anthropic",
                    "--cache",
                    str(cache),
                    *FAST,
                )
            )
            == 0
        )
    capsys.readouterr()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{_closed_port()}")
    start = time.perf_counter()
    code = cli_main(
        edit_command(
            write_pairs(tmp_path / "all.jsonl", texts),
            tmp_path / "all-out.jsonl",
            "anthropic",
            "--cache",
            str(cache),
            "--concurrency",
            "2",
            "--max-initial-connect-failures",
            "4",
            *FAST,
        )
    )
    line = _one_error_line(capsys)
    assert code == 3 and time.perf_counter() - start < 60
    assert "the first 4 requests all failed to connect" in line and "completed items are cached" in line
    reader = EditCache(cache)
    assert len(reader) == 5  # what the first run completed is kept
    reader.close()


def test_winrate_rejects_an_empty_reference(tmp_path, capsys):
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text(
        json.dumps({"prompt": "p", "reference": "r"}) + "\n" + json.dumps({"prompt": "q", "reference": "  "}) + "\n",
        encoding="utf-8",
    )
    _fails_fast(
        capsys, ["winrate", "--model", "tiny", "--eval-set", str(eval_set)], "eval.jsonl:2: field 'reference' is empty"
    )
