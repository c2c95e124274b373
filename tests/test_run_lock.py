"""Runs that share a run directory (fgrlhf.runtime.run_dir): the ``DIR/.lock`` held for the whole run, stale
locks of killed runs, and where a relative ``--out`` goes inside a Ray job."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fgrlhf.cli import main as fgrlhf
from fgrlhf.config import ConfigError
from fgrlhf.runtime.run_dir import LOCK, RAY_JOB_ENV, STORAGE_ROOT_ENV, RunDirError, check_out_dir, open_run
from fgrlhf.trainers.ppo.config import PPO_RUN
from tests.test_run_dir import PPO_CONFIG, finished_run, ppo_cfg

ROOT = Path(__file__).resolve().parents[1]
# A run that opens DIR (argv[1]) like `fgrlhf ppo`, writes its run.json, says so and lives until killed.
HOLDER = """
import sys, time
from fgrlhf.config import load_config
from fgrlhf.runtime.run_dir import open_run
from fgrlhf.trainers.ppo.config import PPO_RUN, PPOTrainConfig
run = open_run(sys.argv[1], PPO_RUN, load_config(PPOTrainConfig, sys.argv[2], []))
run.start()
print("started", flush=True)
time.sleep(600)
"""


def body(out: Path) -> dict:
    text = (out / LOCK).read_text()
    return json.loads(text) if text.strip() else {}


@pytest.fixture
def no_ray(monkeypatch):
    import fgrlhf.runtime.distributed

    def boom(*args, **kwargs):
        raise AssertionError("started Ray")

    monkeypatch.setattr(fgrlhf.runtime.distributed, "ray_instance", boom)


# --- the lock, with another holder simulated in this process ------------------------------------------------
def test_a_live_holder_refuses_every_open_naming_it(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = {"host": "node-7", "pid": 4242, "started": "2026-12-06T10:00:00+00:00", "command": "fgrlhf ppo"}
    with open(out / LOCK, "w") as handle:  # another open file description: what a second process holds
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.write(json.dumps(holder))
        handle.flush()
        for flags in ({}, {"resume": True}, {"overwrite": True}):
            with pytest.raises(RunDirError, match=r"is in use by a live run \(host node-7, pid 4242, since 2026"):
                open_run(out, PPO_RUN, ppo_cfg(), **flags)
    assert json.loads((out / LOCK).read_text()) == holder  # the holder's record is untouched


def test_the_lock_names_its_holder_and_a_finished_run_releases_it(tmp_path):
    out = tmp_path / "run"
    run = open_run(out, PPO_RUN, ppo_cfg())
    assert body(out)["pid"] == os.getpid() and body(out)["host"] == socket.gethostname()
    run.start()
    run.finish({"step": 0})
    assert body(out) == {}  # released cleanly: the next run finds no stale lock
    assert open_run(out, PPO_RUN, ppo_cfg(), resume=True).done


def test_a_stale_lock_is_reported_and_taken_over_only_on_resume_or_overwrite(tmp_path, caplog):
    out = finished_run(tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = {"host": socket.gethostname(), "pid": pid, "started": "2026-12-06T10:00:00+00:00", "command": "x"}
    (out / LOCK).write_text(json.dumps(stale))
    with pytest.raises(RunDirError, match=rf"stale lock: .*pid {pid}.*no longer running.*pass --resume"):
        open_run(out, PPO_RUN, ppo_cfg())
    assert body(out) == stale  # reported, not stolen
    with caplog.at_level(logging.WARNING):
        open_run(out, PPO_RUN, ppo_cfg(), resume=True)
    assert "taking over the stale lock" in caplog.text
    assert body(out)["pid"] == os.getpid()


def test_an_unrelated_dir_gets_no_lock_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no run"):
        open_run(tmp_path, PPO_RUN, ppo_cfg())
    assert not (tmp_path / LOCK).exists()


# --- two processes ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_live_runs_then_a_killed_holder(tmp_path, capsys, no_ray):
    out = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out), str(PPO_CONFIG)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "started"
        before = {name: (out / name).read_bytes() for name in ("run.json", "config.yaml", LOCK)}
        args = ["ppo", "--config", str(PPO_CONFIG), "--out", str(out), "seed=1"]
        for flags in ([], ["--resume"], ["--overwrite"]):
            assert fgrlhf([*args, *flags]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and err[0].startswith(f"error: {out} is in use by a live run (host ")
            assert f"pid {first.pid}," in err[0]
        assert {name: (out / name).read_bytes() for name in before} == before  # the first run is untouched
        assert first.poll() is None

        first.send_signal(signal.SIGKILL)
        first.wait()
        assert fgrlhf(args) == 2
        err = capsys.readouterr().err
        assert f"has a stale lock: the run of host {socket.gethostname()}, pid {first.pid}" in err
        assert "no longer running" in err and "pass --resume" in err
        assert body(out)["pid"] == first.pid
        # --resume (with the run's own settings) takes it over
        run = open_run(out, PPO_RUN, ppo_cfg(), resume=True)
        assert run.mode == "resume" and body(out)["pid"] == os.getpid()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()


# --- where --out is -------------------------------------------------------------------------------------------
JOB = json.dumps(
    {"runtime_env": {"working_dir": "gcs://_ray_pkg_x.zip"}, "metadata": {"job_submission_id": "raysubmit_A1"}}
)


def test_relative_out_is_refused_inside_a_ray_job(monkeypatch, tmp_path):
    monkeypatch.delenv(STORAGE_ROOT_ENV, raising=False)
    assert check_out_dir("runs/x") == Path("runs/x")  # outside a job: the current directory's
    monkeypatch.setenv(RAY_JOB_ENV, JOB)
    with pytest.raises(
        ConfigError, match=r"--out runs/x is relative inside the Ray job raysubmit_A1: .*temporary copy"
    ):
        check_out_dir("runs/x")
    with pytest.raises(ConfigError, match=r"--report r.json is relative"):
        check_out_dir("r.json", what="--report")
    assert check_out_dir(tmp_path / "x") == tmp_path / "x"  # absolute: fine anywhere
    monkeypatch.setenv(STORAGE_ROOT_ENV, str(tmp_path))
    assert check_out_dir("runs/x") == tmp_path / "runs" / "x"
    monkeypatch.setenv(STORAGE_ROOT_ENV, "rel")
    with pytest.raises(ConfigError, match="must be an absolute path"):
        check_out_dir("runs/x")


@pytest.mark.parametrize("name", ["ppo", "figa-data"])
def test_cli_refuses_a_relative_out_in_a_ray_job_before_any_work(name, monkeypatch, tmp_path, capsys, no_ray):
    monkeypatch.delenv(STORAGE_ROOT_ENV, raising=False)
    monkeypatch.setenv(RAY_JOB_ENV, JOB)
    monkeypatch.chdir(tmp_path)
    config = {"ppo": PPO_CONFIG, "figa-data": ROOT / "configs" / "figa-data-tiny-cpu.yaml"}[name]
    assert fgrlhf([name, "--config", str(config), "--out", "runs/x"]) == 2
    assert "is relative inside the Ray job raysubmit_A1" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
