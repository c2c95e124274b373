"""A run directory on a small disk (fgrlhf.runtime.run_dir): refused at start when its checkpoints cannot fit
(``--force`` goes on), and a checkpoint or export that still fails for space ends in one line and a run.json
marked failed. The disk is a real tmpfs where this machine lets the test mount one (root); otherwise the free
space and the ENOSPC are simulated."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
from collections import namedtuple
from pathlib import Path

import pytest

from fgrlhf.cli import main as fgrlhf
from fgrlhf.runtime.run_dir import DiskFullError, open_run
from fgrlhf.trainers.ppo.config import PPO_RUN
from tests.test_run_dir import command_args, ppo_cfg
from tests.test_train_rm import TRAIN, _edit_records

MiB = 1 << 20


def _mount_tmpfs(where: Path, size: int) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A directory on a 12 MiB filesystem: a tmpfs, or (no mount allowed) ``disk_usage`` reporting 12 MiB free."""
    where = tmp_path / "small"
    mounted = _mount_tmpfs(where, 12 * MiB)
    if not mounted:
        where.mkdir()
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr("fgrlhf.runtime.run_dir.shutil.disk_usage", lambda _: usage(12 * MiB, 0, 12 * MiB))
    yield where
    if mounted:
        subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def real_small_disk(tmp_path):
    where = tmp_path / "small"
    if not _mount_tmpfs(where, 12 * MiB):
        pytest.skip("cannot mount a tmpfs here (needs root and mount); the simulated-ENOSPC tests cover the path")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@pytest.fixture
def no_ray(monkeypatch):
    import fgrlhf.runtime.distributed

    def boom(*args, **kwargs):
        raise AssertionError("started Ray")

    monkeypatch.setattr(fgrlhf.runtime.distributed, "ray_instance", boom)


# --- refused at start --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ppo", "train-rm", "figa"])
def test_a_run_whose_checkpoints_cannot_fit_is_refused_before_ray(name, small_disk, tmp_path, capsys, no_ray):
    out = small_disk / "run"
    args = command_args(name, out, tmp_path)
    assert fgrlhf(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {out} has 12.0 MiB free, but the run will write up to ")
    assert "kept checkpoint(s)" in err[0] and "pass --force to run anyway" in err[0]
    with pytest.raises(AssertionError, match="started Ray"):  # --force goes on to the training
        fgrlhf([*args, "--resume", "--force"])


def test_a_run_that_fits_is_not_refused(tmp_path, capsys, no_ray):
    with pytest.raises(AssertionError, match="started Ray"):
        fgrlhf(command_args("ppo", tmp_path / "run", tmp_path))


# --- a write that still fails for space ----------------------------------------------------------------------
def _started_run(out: Path):
    run = open_run(out, PPO_RUN, ppo_cfg())
    run.start()
    path = run.checkpoint_dir(1)
    (path / "w.bin").write_bytes(b"w")
    run.commit_checkpoint(path, {"step": 1}, keep=2)
    return run


def _assert_failed(run, message: str) -> None:
    manifest = json.loads((run.path / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == message


def test_enospc_at_the_write_is_one_line_and_marks_the_run_failed(tmp_path):
    run = _started_run(tmp_path / "run")
    run.sizes = (70 * MiB, 30 * MiB)
    target = run.checkpoint_dir(2)
    with pytest.raises(DiskFullError) as caught, run.space_guard(target, "checkpoint"):
        raise OSError(errno.ENOSPC, "No space left on device", str(target / "mp_rank_00_model_states.pt"))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"no space left writing the checkpoint {target}: it needs about 70.0 MiB (")
    assert message.endswith("re-run with --resume to continue from the last complete checkpoint (step_1)")
    _assert_failed(run, message)


def test_a_ray_wrapped_iostream_error_on_a_full_disk_is_recognised(tmp_path, monkeypatch):
    from ray.exceptions import RayTaskError

    run = _started_run(tmp_path / "run")
    run.sizes = (70 * MiB, 30 * MiB)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr("fgrlhf.runtime.run_dir.shutil.disk_usage", lambda _: usage(60 * MiB, 59 * MiB, MiB))
    # What the learner actor's torch.save raised on the 60 MB filesystem, as ray.get re-raises it.
    actor_error = RayTaskError("save_checkpoint", "Traceback ...", RuntimeError("basic_ios::clear: iostream error"))
    full = pytest.raises(DiskFullError, match=r"checkpoint .*it needs about 70.0 MiB \(1.0 MiB free")
    with full, run.space_guard(run.checkpoint_dir(2), "checkpoint"):
        raise actor_error.as_instanceof_cause()
    # With room to spare the same error is not a full disk: it propagates as it was.
    monkeypatch.setattr("fgrlhf.runtime.run_dir.shutil.disk_usage", lambda _: usage(9e9, 0, 9e9))
    wrapped = actor_error.as_instanceof_cause()
    with pytest.raises(RuntimeError) as caught, run.space_guard(tmp_path, "checkpoint"):
        raise wrapped
    assert caught.value is wrapped


def test_the_final_export_on_a_full_tmpfs(real_small_disk):
    run = _started_run(real_small_disk / "run")
    full = pytest.raises(DiskFullError, match=r"no space left writing the final export .*final\.partial")
    with full as caught, run.staging_final() as partial:
        partial.mkdir()
        (partial / "model.safetensors").write_bytes(b"\0" * (16 * MiB))  # a real ENOSPC
    _assert_failed(run, str(caught.value))
    assert not run.final.exists()


@pytest.mark.slow
def test_train_rm_checkpoint_on_a_full_tmpfs_fails_in_one_line(ray_session, real_small_disk, tmp_path, capsys):
    """The issue's case: ``--force`` past the start check, the first checkpoint fails on the training actor."""
    data = tmp_path / "edits.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _edit_records()))
    out = real_small_disk / "rm"
    args = ["train-rm", "--data", str(data), "--kind", "token", "--model", "tiny", "--out", str(out), "--force"]
    assert fgrlhf([*args, *TRAIN, "save_every=1"]) == 2
    err = capsys.readouterr().err
    # The line follows the progress bar's last \r update (the bar closes after the error is printed).
    errors = [line[line.index("error: ") :] for line in re.split(r"[\r\n]", err) if "error: " in line]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith(f"error: no space left writing the checkpoint {out / 'checkpoints' / 'step_1'}: ")
    assert "it needs about 36.9 MiB" in errors[0] and "re-run with --resume to continue from the start" in errors[0]
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["status"] == "failed" and manifest["error"] == errors[0].removeprefix("error: ")
