"""``fgrlhf train-rm`` / ``eval-rm`` end to end on CPU with the tiny backbone: both kinds, resume at the same
step and data order, 1 rank x 2 accumulation steps == 2 ZeRO-3 ranks x 1, and the input errors."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from fgrlhf.cli import main as fgrlhf
from tests.helpers import last_json, read_metrics

SUBJECTS = ["the weather", "this recipe", "the movie", "my garden", "the lecture", "our trip"]
TRAIN = [
    "max_steps=4",
    "deepspeed.micro_batch_size=2",
    "deepspeed.lr=1e-3",
    "max_prompt_tokens=48",
    "max_response_tokens=32",
    "eval_fraction=0.2",
]
# The token run's settings: 1 rank x 2 accumulation steps, a checkpoint and an evaluation every 2 steps.
TOKEN_RUN = ("deepspeed.gradient_accumulation_steps=2", "save_every=2", "eval_every=2")


def train_tiny_rm(records: Path, out: Path, *flags: str, kind: str = "token", overrides: tuple[str, ...] = ()) -> int:
    """``fgrlhf train-rm`` of a tiny-backbone RM with the TRAIN settings; ``flags`` precede the overrides."""
    args = ["--data", str(records), "--kind", kind, "--model", "tiny", "--out", str(out), *flags]
    return fgrlhf(["train-rm", *args, *TRAIN, *overrides])


def _edit_records() -> list[dict]:
    """Rule-style minimal edits (one adjective swapped), plus records edit marks as not training data."""
    records = []
    for i in range(20):
        subject = SUBJECTS[i % len(SUBJECTS)]
        records.append(
            {
                "prompt": f"Describe {subject} in one sentence ({i}).",
                "editor": "rules",
                "original": f"Honestly, {subject} was <b>dull</b> & boring.",
                "edited": f"Honestly, {subject} was <b>lively</b> & fun.",
                "status": "edited",
            }
        )
    records.append({"prompt": "Describe nothing.", "original": "x", "edited": "", "status": "failed"})
    return records


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rm-data")
    edits = _edit_records()
    pairs = [
        {"prompt": r["prompt"], "chosen": r["edited"], "rejected": r["original"]}
        for r in edits
        if r["status"] == "edited"
    ]
    paths = {"edits": root / "edits.jsonl", "pairs": root / "pairs.jsonl"}
    for name, records in (("edits", edits), ("pairs", pairs)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return paths


@pytest.fixture(scope="module")
def token_run(ray_session, data, tmp_path_factory) -> Path:
    """Token RM on edit records (Eq. 4), 1 rank x 2 accumulation steps, a checkpoint at step 2."""
    out = tmp_path_factory.mktemp("rm-token") / "run"
    code = train_tiny_rm(data["edits"], out, overrides=TOKEN_RUN)
    assert code == 0
    return out


@pytest.mark.slow
def test_token_rm_trains_and_evaluates(token_run, data, capsys, tmp_path):
    rows = read_metrics(token_run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("loss", "lr", "examples_per_s", "accuracy"):
        assert all(key in r for r in rows)
    assert "eval_accuracy" in rows[1] and "eval_accuracy" in rows[3] and "eval_accuracy" not in rows[0]
    assert rows[-1]["loss"] < rows[0]["loss"]  # the swapped adjective is learnable in 4 steps at lr 1e-3
    assert (token_run / "checkpoints" / "step_2" / "trainer_state.json").is_file()
    assert list((token_run / "tb").glob("events.out.tfevents.*"))
    config = json.loads((token_run / "final" / "config.json").read_text())["fgrlhf_reward"]
    assert config["kind"] == "token" and config["loss"] == "eq4"

    capsys.readouterr()
    heatmap = tmp_path / "heat.html"
    assert (
        fgrlhf(
            [
                "eval-rm",
                "--rm",
                str(token_run / "final"),
                "--data",
                str(data["pairs"]),
                "--heatmap",
                str(heatmap),
                "--heatmap-k",
                "2",
            ]
        )
        == 0
    )
    result = last_json(capsys.readouterr().out)
    assert result["n"] == 20 and 0 <= result["ci_low"] <= result["accuracy"] <= result["ci_high"] <= 1
    assert result["accuracy"] > 0.5
    assert json.loads((token_run / "final" / "eval-pairs.json").read_text())["accuracy"] == result["accuracy"]
    # length-bias diagnostics: every response here has the same length, so no correlation is defined;
    # one mean per 16-token bin of the longest response
    assert "length_correlation" in result and result["length_correlation"] is None
    by_position = result["token_reward_by_position"]
    assert by_position["bin_tokens"] == 16 and by_position["mean"] and by_position["mean"][0] is not None
    page = heatmap.read_text()
    assert "&lt;" in page and "&amp;" in page and "<b>" not in page  # response text is escaped
    assert page.count('title="r = ') > 20 and "rgba(" in page


@pytest.mark.slow
def test_resume_continues_at_the_same_step_and_data_order(token_run, data, caplog, capsys):
    caplog.set_level(logging.INFO)
    before = read_metrics(token_run)
    # A crash after the step-2 checkpoint: status running, no final/.
    shutil.rmtree(token_run / "final")
    manifest = json.loads((token_run / "run.json").read_text())
    (token_run / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    code = train_tiny_rm(data["edits"], token_run, "--resume", overrides=TOKEN_RUN)
    assert code == 0
    assert "at step 2" in caplog.text
    after = read_metrics(token_run)
    assert [r["step"] for r in after] == [1, 2, 3, 4]
    for old, new in zip(before[2:], after[2:]):
        assert new["loss"] == pytest.approx(old["loss"], rel=1e-5)
        assert new["eval_loss" if "eval_loss" in old else "loss"] == pytest.approx(
            old["eval_loss" if "eval_loss" in old else "loss"], rel=1e-5
        )

    # Finished now: --resume with other data is refused and retrains nothing.
    capsys.readouterr()
    final = (token_run / "final" / "model.safetensors").stat().st_mtime_ns
    code = train_tiny_rm(data["pairs"], token_run, "--resume", overrides=TOKEN_RUN)
    assert code == 2 and "data (content sha256)" in capsys.readouterr().err
    assert read_metrics(token_run) == after and (token_run / "final" / "model.safetensors").stat().st_mtime_ns == final


@pytest.mark.slow
def test_one_rank_equals_two_zero3_ranks(token_run, data, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "two-ranks"
    code = train_tiny_rm(
        data["edits"], out, overrides=("deepspeed.world_size=2", "deepspeed.zero_stage=3", "eval_every=2")
    )
    assert code == 0
    assert "ZeRO stage 3, 2 rank(s), global batch 4" in caplog.text
    one, two = read_metrics(token_run), read_metrics(out)
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        if "eval_loss" in a:
            assert b["eval_loss"] == pytest.approx(a["eval_loss"], rel=1e-4)


@pytest.mark.slow
def test_sequence_rm_on_plain_pairs(ray_session, data, tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "seq"
    code = train_tiny_rm(data["pairs"], out, kind="sequence")
    assert code == 0
    assert "ZeRO stage 0" in caplog.text and "loss bt" in caplog.text
    rows = read_metrics(out)
    assert len(rows) == 4 and "eval_accuracy" in rows[-1]
    capsys.readouterr()
    report = tmp_path / "report.json"
    assert fgrlhf(["eval-rm", "--rm", str(out / "final"), "--data", str(data["edits"]), "--report", str(report)]) == 0
    result = last_json(capsys.readouterr().out)
    assert result["kind"] == "sequence" and result["n"] == 20 and result["data_kind"] == "edit records"
    assert "token_reward_by_position" not in result  # a sequence RM has one reward per response
    # "longer wins" on these edits: "lively & fun" and "dull & boring" are 18 tokens alike, so every pair
    # ties and length alone scores chance, with no untied pair to score.
    baseline = result["length_baseline"]
    assert result["length_baseline_accuracy"] == baseline["longer_wins"] == baseline["shorter_wins"] == 0.5
    assert baseline["n"] == baseline["tied"] == 20 and baseline["longer_wins_untied"] is None
    assert json.loads(report.read_text())["ci_high"] == result["ci_high"]


def test_input_errors_name_the_problem(data, tmp_path, capsys):
    assert (
        fgrlhf(["train-rm", "--data", str(data["pairs"]), "--kind", "token", "--out", str(tmp_path / "x"), "loss=eq4"])
        == 2
    )
    assert "eq4 needs edit records" in capsys.readouterr().err
    assert (
        fgrlhf(
            ["train-rm", "--data", str(data["edits"]), "--kind", "sequence", "--out", str(tmp_path / "x"), "loss=eq3"]
        )
        == 2
    )
    assert "sequence RM trains with bt" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": 3, "rejected": "b"}\n')
    assert fgrlhf(["train-rm", "--data", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert f"{bad}:2: field 'chosen' must be a string" in capsys.readouterr().err
    assert fgrlhf(["train-rm", "--data", str(data["pairs"]), "--out", str(tmp_path / "x"), "deepspeed.lrr=1"]) == 2
    assert "unknown key 'deepspeed.lrr'" in capsys.readouterr().err
