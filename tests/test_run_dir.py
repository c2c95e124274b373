"""The run-directory policy (fgrlhf.runtime.run_dir): never overwrite or mix runs. The rules are tested on the module
directly (no Ray, no model); the CLI tests check that every trainer applies them before Ray or a model starts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from fgrlhf.cli import build_parser
from fgrlhf.cli import main as fgrlhf
from fgrlhf.config import load_config
from fgrlhf.runtime.run_dir import RunDirError, latest_checkpoint, open_run
from fgrlhf.trainers.ppo.config import PPO_RUN, PPOTrainConfig

ROOT = Path(__file__).resolve().parents[1]
PPO_CONFIG = ROOT / "configs" / "ppo-tiny-cpu.yaml"
FIGA_CONFIG = ROOT / "configs" / "figa-tiny-cpu.yaml"
FIGA_EDITS = ROOT / "tests" / "fixtures" / "figa_edits_tiny.jsonl"


def ppo_cfg(*overrides: str) -> PPOTrainConfig:
    return load_config(PPOTrainConfig, PPO_CONFIG, list(overrides))


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fake_training(run, steps: range, save_every: int, keep: int = 2) -> None:
    """What a trainer does with its run directory, minus the model: metrics, checkpoints, final/."""
    latest = run.resume_checkpoint()
    run.start()
    start = latest.step if latest else 0
    log = run.metrics(start)
    for step in range(start + 1, steps.stop + 1):
        log.write({"step": step, "loss": 1.0 / step}, {"train/loss": 1.0 / step})
        if step % save_every == 0 or step == steps.stop:
            path = run.checkpoint_dir(step)
            (path / "weights.bin").write_bytes(b"w")
            run.commit_checkpoint(path, {"step": step}, keep)
    log.close()
    with run.staging_final() as partial:
        partial.mkdir()
        (partial / "config.json").write_text("{}")
    run.finish({"step": steps.stop})


def finished_run(out: Path, cfg=None, steps: int = 2) -> Path:
    fake_training(open_run(out, PPO_RUN, cfg or ppo_cfg(f"steps={steps}")), range(steps), save_every=1)
    return out


# --- opening --out ----------------------------------------------------------------------------------------
def test_new_run_in_a_missing_or_empty_dir(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "missing", tmp_path / "empty"):
        run = open_run(out, PPO_RUN, ppo_cfg())
        assert run.mode == "new" and not run.done
        run.start()
        manifest = json.loads((out / "run.json").read_text())
        assert manifest["command"] == "ppo" and manifest["status"] == "running" and manifest["created"]
        assert manifest["inputs"]["prompts.path"]["sha256"]  # the prompts file is hashed
        assert load_config(PPOTrainConfig, out / "config.yaml") == ppo_cfg()
        run.finish({"step": 4})
        assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_resume_into_an_empty_dir_starts_a_new_run(tmp_path):
    assert open_run(tmp_path / "none", PPO_RUN, ppo_cfg(), resume=True).mode == "new"


@pytest.mark.parametrize("finish", [True, False])
def test_refuses_a_dir_holding_a_run(tmp_path, finish):
    run = open_run(tmp_path, PPO_RUN, ppo_cfg())
    run.start()
    if finish:
        run.finish({})
    with pytest.raises(RunDirError) as err:
        open_run(tmp_path, PPO_RUN, ppo_cfg())
    message = str(err.value)
    assert str(tmp_path) in message and "--resume" in message and "--overwrite" in message
    assert ("finished" if finish else "running") in message


def test_refuses_unrelated_files_whatever_the_flag(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for flags in ({}, {"resume": True}, {"overwrite": True}):
        with pytest.raises(RunDirError, match=r"holds no run \(notes\.txt\)"):
            open_run(tmp_path, PPO_RUN, ppo_cfg(), **flags)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_refuses_another_commands_run_and_both_flags(tmp_path):
    from fgrlhf.figa.config import FIGA_DATA_RUN, FigaCollectConfig

    open_run(tmp_path, FIGA_DATA_RUN, FigaCollectConfig()).start()
    with pytest.raises(RunDirError, match="holds a `fgrlhf figa-data` run, not a `fgrlhf ppo` one"):
        open_run(tmp_path, PPO_RUN, ppo_cfg(), resume=True)
    with pytest.raises(RunDirError, match="exclude each other"):
        open_run(tmp_path, PPO_RUN, ppo_cfg(), resume=True, overwrite=True)


def test_overwrite_removes_only_the_old_runs_files(tmp_path):
    finished_run(tmp_path)
    (tmp_path / "tiny_rm_token").mkdir()  # built by a tiny-RM run: the run's own
    (tmp_path / "timing.json").write_text("{}")  # a benchmark's file beside the run: not the run's
    with pytest.raises(RunDirError, match=r"also holds timing\.json"):
        open_run(tmp_path, PPO_RUN, ppo_cfg(), overwrite=True)
    assert (tmp_path / "final").is_dir()  # nothing was removed

    (tmp_path / "timing.json").unlink()
    before = json.loads((tmp_path / "run.json").read_text())
    run = open_run(tmp_path, PPO_RUN, ppo_cfg("seed=5"), overwrite=True)  # a new run: any settings
    assert (tmp_path / "final").is_dir()  # opening writes nothing; start() does
    run.start()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", "config.yaml", "run.json"]
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "running"
    assert before["status"] == "finished"


def test_resume_records_allowed_changes(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    run = open_run(tmp_path, PPO_RUN, ppo_cfg())
    run.start()  # an interrupted run (status running)
    run = open_run(tmp_path, PPO_RUN, ppo_cfg("steps=9", "save_every=3", "rollout.num_cpus=0.5"), resume=True)
    assert run.mode == "resume" and not run.done
    run.start()
    assert "--resume: steps changed from 4 to 9" in caplog.text
    (entry,) = lines(tmp_path / "resumes.jsonl")
    assert entry["status_before"] == "running"
    assert entry["changes"] == {"rollout.num_cpus": [0.25, 0.5], "save_every": [2, 3], "steps": [4, 9]}
    assert load_config(PPOTrainConfig, tmp_path / "config.yaml").steps == 9  # the next resume compares to this


def test_resume_refuses_meaning_changes_with_a_diff(tmp_path):
    open_run(tmp_path, PPO_RUN, ppo_cfg()).start()
    with pytest.raises(RunDirError) as err:
        open_run(
            tmp_path,
            PPO_RUN,
            ppo_cfg("seed=1", "ppo.reward_mode=sequence", "steps=9", "ppo.rollout_batch_size=16"),
            resume=True,
        )
    message = str(err.value)
    assert "  seed: 0 -> 1" in message and '  ppo.reward_mode: "token" -> "sequence"' in message
    assert "  ppo.rollout_batch_size: 8 -> 16" in message
    assert "steps" not in message  # an allowed change is not reported as a reason
    assert not (tmp_path / "resumes.jsonl").exists()


def test_a_key_added_since_the_run_is_a_change_only_off_its_default(tmp_path):
    import yaml

    open_run(tmp_path, PPO_RUN, ppo_cfg()).start()
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del saved["ppo"]["async_rollout"]  # a run written before the key existed
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert open_run(tmp_path, PPO_RUN, ppo_cfg(), resume=True).mode == "resume"
    with pytest.raises(RunDirError, match=r"ppo\.async_rollout: false -> true"):
        open_run(tmp_path, PPO_RUN, ppo_cfg("ppo.async_rollout=true"), resume=True)


def test_input_files_are_compared_by_content(tmp_path):
    from fgrlhf.reward.train import RM_RUN, RMTrainConfig

    data, moved, other = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    moved.write_text(data.read_text())
    other.write_text('{"prompt": "p", "chosen": "b", "rejected": "a"}\n')
    out = tmp_path / "run"
    open_run(out, RM_RUN, RMTrainConfig(), inputs={"data": str(data)}).start()
    run = open_run(out, RM_RUN, RMTrainConfig(), resume=True, inputs={"data": str(moved)})
    assert run.changes == {"data": (str(data), str(moved))}  # same content elsewhere: fine, recorded
    with pytest.raises(RunDirError, match=r"data \(content sha256\)"):
        open_run(out, RM_RUN, RMTrainConfig(), resume=True, inputs={"data": str(other)})


def test_finished_run_is_done_unless_its_length_changes(tmp_path):
    finished_run(tmp_path, steps=2)
    same = open_run(tmp_path, PPO_RUN, ppo_cfg("steps=2"), resume=True)
    assert same.done and same.result == {"step": 2}
    with pytest.raises(RuntimeError, match="finished"):
        same.start()
    assert open_run(tmp_path, PPO_RUN, ppo_cfg("steps=2", "save_every=1"), resume=True).done  # nothing to redo
    longer = open_run(tmp_path, PPO_RUN, ppo_cfg("steps=3"), resume=True)
    assert not longer.done
    fake_training(longer, range(3), save_every=1)
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_figa_data_reruns_a_finished_run(tmp_path):
    from fgrlhf.figa.config import FIGA_DATA_RUN, FigaCollectConfig

    run = open_run(tmp_path, FIGA_DATA_RUN, FigaCollectConfig())
    run.start()
    run.finish({})
    assert not open_run(tmp_path, FIGA_DATA_RUN, FigaCollectConfig(), resume=True).done  # retries failed edits


# --- the reported splice: runs never mix --------------------------------------------------------------------
def test_a_second_run_into_a_used_dir_no_longer_splices(tmp_path):
    """Before: an 8-step run, then a 2-step run into the same --out (no flag) truncated the metrics and kept
    step_6/step_8, and a later --resume continued from step_8 behind the 2-step run's metrics (1, 2, 7, 8)."""
    fake_training(open_run(tmp_path, PPO_RUN, ppo_cfg("steps=8")), range(8), save_every=2)
    with pytest.raises(RunDirError, match="already holds a ppo run \\(finished\\)"):
        open_run(tmp_path, PPO_RUN, ppo_cfg("steps=2"))
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == list(range(1, 9))  # untouched

    fake_training(open_run(tmp_path, PPO_RUN, ppo_cfg("steps=2"), overwrite=True), range(2), save_every=2)
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2"]
    resumed = open_run(tmp_path, PPO_RUN, ppo_cfg("steps=8"), resume=True)
    assert resumed.resume_checkpoint().step == 2
    fake_training(resumed, range(8), save_every=2)
    assert [r["step"] for r in lines(tmp_path / "metrics.jsonl")] == list(range(1, 9))


# --- checkpoints, metrics, final/ -----------------------------------------------------------------------------
def test_checkpoints_latest_complete_and_pruning(tmp_path):
    run = open_run(tmp_path, PPO_RUN, ppo_cfg())
    run.start()
    for step in (1, 2, 3):
        run.commit_checkpoint(run.checkpoint_dir(step), {"step": step}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2", "step_3"]
    run.checkpoint_dir(4)  # a crash while saving step 4: no state file
    assert latest_checkpoint(tmp_path) == (3, tmp_path / "checkpoints" / "step_3", {"step": 3})
    (tmp_path / "checkpoints" / "step_1").mkdir()  # an older incomplete leftover
    run.commit_checkpoint(run.checkpoint_dir(4), {"step": 4}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_3", "step_4"]
    assert not list((tmp_path / "checkpoints" / "step_4").glob("*.tmp"))


def test_metrics_resume_drops_the_redone_steps(tmp_path):
    run = open_run(tmp_path, PPO_RUN, ppo_cfg())
    run.start()
    first = run.metrics(0)
    for step in (1, 2, 3):
        first.write({"step": step}, {})
    first.close()
    resumed = run.metrics(2)
    assert [r["step"] for r in resumed.history] == [1, 2]
    resumed.write({"step": 3, "again": True}, {})
    resumed.close()
    assert lines(tmp_path / "metrics.jsonl") == [{"step": 1}, {"step": 2}, {"step": 3, "again": True}]


def test_final_is_replaced_only_by_a_complete_export(tmp_path):
    run = open_run(tmp_path, PPO_RUN, ppo_cfg())
    run.start()
    run.final.mkdir()
    (run.final / "model").write_text("old")
    with pytest.raises(KeyboardInterrupt), run.staging_final() as partial:
        partial.mkdir()
        raise KeyboardInterrupt  # interrupted mid-export
    assert (run.final / "model").read_text() == "old"
    with run.staging_final() as partial:
        partial.mkdir()
        (partial / "model").write_text("new")
    assert (run.final / "model").read_text() == "new" and not (tmp_path / "final.partial").exists()


# --- each command's policy --------------------------------------------------------------------------------
def _specs():
    from fgrlhf.figa.config import FIGA_DATA_RUN, FIGA_RUN, FigaCollectConfig, FigaTrainConfig
    from fgrlhf.reward.train import RM_RUN, RMTrainConfig

    return [
        (PPO_RUN, ppo_cfg()),
        (RM_RUN, RMTrainConfig()),
        (FIGA_RUN, FigaTrainConfig(data={"edits_path": str(FIGA_EDITS)})),
        (FIGA_DATA_RUN, FigaCollectConfig()),
    ]


@pytest.mark.parametrize("index", range(4))
def test_every_changeable_key_and_input_exists(index):
    from fgrlhf.runtime.run_dir import _covered, flatten

    spec, cfg = _specs()[index]
    keys = set(flatten(cfg.model_dump(mode="json")))
    keys |= {k.rsplit(".", 1)[0] for k in keys if "." in k}  # sections too (stop_at_gold is None by default)
    keys |= {name for name, field in type(cfg).model_fields.items()}
    for pattern in spec.changeable:  # a renamed key must not silently become unchangeable
        assert any(_covered(key, (pattern,)) for key in keys), pattern
    assert set(spec.extends) <= set(spec.changeable) and set(spec.inputs) <= keys


# --- the CLI: refused before Ray or any model starts ----------------------------------------------------------
@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command gets as far as Ray or figa-data's model work."""
    import fgrlhf.figa.collect
    import fgrlhf.runtime.distributed

    def boom(*args, **kwargs):
        raise AssertionError("started Ray or a model")

    monkeypatch.setattr(fgrlhf.runtime.distributed, "ray_instance", boom)
    monkeypatch.setattr(fgrlhf.figa.collect, "collect", boom)


def command_args(name: str, out: Path, tmp_path: Path) -> list[str]:
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    return {
        "ppo": ["ppo", "--config", str(PPO_CONFIG), "--out", str(out)],
        "train-rm": ["train-rm", "--data", str(data), "--model", "tiny", "--out", str(out)],
        "figa": ["figa", "--config", str(FIGA_CONFIG), "--out", str(out), f"data.edits_path={FIGA_EDITS}"],
        "figa-data": ["figa-data", "--config", str(ROOT / "configs" / "figa-data-tiny-cpu.yaml"), "--out", str(out)],
    }[name]


@pytest.mark.parametrize("name", ["ppo", "train-rm", "figa", "figa-data"])
def test_cli_refuses_a_used_out_before_any_work(name, tmp_path, capsys, no_work):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"command": name, "status": "finished"}))
    assert fgrlhf(command_args(name, out, tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"error: {out} already holds a {name} run (finished); pass --resume" in err and "--overwrite" in err


def test_cli_ppo_resume_with_other_seed_is_refused_with_a_diff(tmp_path, capsys, no_work):
    finished_run(tmp_path / "run", steps=4)
    args = command_args("ppo", tmp_path / "run", tmp_path)
    assert fgrlhf([*args, "seed=3", "--resume"]) == 2
    assert "  seed: 0 -> 3" in capsys.readouterr().err
    assert fgrlhf([*args, "--resume"]) == 0  # finished, same settings: its saved result, no Ray
    assert json.loads(capsys.readouterr().out) == {"step": 4}


def test_cli_train_rm_resume_of_a_finished_run_with_other_data(tmp_path, capsys, no_work):
    from fgrlhf.reward.train import RM_RUN, RMTrainConfig

    out = tmp_path / "rm"
    args = command_args("train-rm", out, tmp_path)
    data = Path(args[2])
    run = open_run(out, RM_RUN, load_config(RMTrainConfig, None, ["model.name=tiny"]), inputs={"data": str(data)})
    run.start()
    run.finish({"final_dir": str(out / "final"), "kind": "token"})

    assert fgrlhf([*args, "--resume"]) == 0  # same config and data: done, not retrained (benchmarks cache on it)
    assert json.loads(capsys.readouterr().out)["final_dir"] == str(out / "final")
    data.write_text('{"prompt": "p", "chosen": "other", "rejected": "b"}\n')
    assert fgrlhf([*args, "--resume"]) == 2
    assert "data (content sha256)" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


# --- overrides before or after --resume ---------------------------------------------------------------------
def _subparsers():
    import argparse

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


@pytest.mark.parametrize(
    "name",
    sorted(name for name, command in _subparsers().items() if any(a.dest == "overrides" for a in command._actions)),
)
def test_overrides_before_and_after_options(name):
    command = _subparsers()[name]
    required = []
    for action in command._actions:
        if action.required and action.option_strings:
            required += [action.option_strings[-1], action.choices[0] if action.choices else "x"]
    flag = "--resume" if any(a.dest == "resume" for a in command._actions) else None
    flags = [flag] if flag else []
    for argv in (
        [*required, *flags, "a.b=1", "c=2"],
        [*required, "a.b=1", *flags, "c=2"],
        ["a.b=1", *required, "c=2", *flags],
    ):
        args = build_parser().parse_args([name, *argv])
        assert args.overrides == ["a.b=1", "c=2"], argv
        if flag:
            assert args.resume
