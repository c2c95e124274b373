"""The package carries its own data (fgrlhf/resources/data) and needs nothing beside it; local Ray stays on
127.0.0.1."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

import fgrlhf
from fgrlhf.data.loading import ALPACA_EVAL_SET, data_dirs, load_records, packaged_data_dir, resolve_data_path
from fgrlhf.runtime.distributed import exit_on_termination

PACKAGE = Path(fgrlhf.__file__).resolve().parent
REPO = PACKAGE.parent
PACKAGED_FILES = (
    "README.md",
    "alpaca_eval/LICENSE",
    "alpaca_eval/eval_set.jsonl",
    "alpaca_eval/preferences_alpaca7b_vs_davinci003.jsonl",
    "alpaca_farm/LICENSE",
    "alpaca_farm/prompt_template.json",
)


def test_relative_data_names_resolve_into_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("FGRLHF_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing here, and nothing beside the package is consulted
    assert data_dirs() == [packaged_data_dir()]
    found = resolve_data_path(ALPACA_EVAL_SET)
    assert found == PACKAGE / "resources" / "data" / "alpaca_eval" / "eval_set.jsonl" and found.is_file()
    assert len(load_records(ALPACA_EVAL_SET, ("prompt", "reference"), allow_empty=("reference",))) == 805


def test_data_dir_override_comes_before_the_packaged_data(tmp_path, monkeypatch):
    override = tmp_path / "override"
    (override / "alpaca_eval").mkdir(parents=True)
    (override / "alpaca_eval" / "eval_set.jsonl").write_text('{"prompt": "p", "reference": "r"}\n')
    monkeypatch.setenv("FGRLHF_DATA_DIR", str(override))
    monkeypatch.chdir(tmp_path)
    assert resolve_data_path(ALPACA_EVAL_SET) == override / "alpaca_eval" / "eval_set.jsonl"
    assert len(load_records(ALPACA_EVAL_SET, ("prompt", "reference"))) == 1
    # A file the override lacks still comes from the package.
    pairs = "alpaca_eval/preferences_alpaca7b_vs_davinci003.jsonl"
    assert resolve_data_path(pairs) == packaged_data_dir() / pairs


def test_packaged_data_is_complete_and_licensed():
    for name in PACKAGED_FILES:
        assert (packaged_data_dir() / name).is_file(), name
    for folder in ("alpaca_eval", "alpaca_farm"):
        assert "Apache License" in (packaged_data_dir() / folder / "LICENSE").read_text()
    from fgrlhf.tokenization import ALPACA_TEMPLATE

    template = json.loads((packaged_data_dir() / "alpaca_farm" / "prompt_template.json").read_text())
    assert template == ALPACA_TEMPLATE


@pytest.mark.slow
def test_non_editable_wheel_carries_the_data(tmp_path):
    """pyproject's package-data: a wheel built from the project's files holds every data file."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(PACKAGE, source / "fgrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("fgrlhf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"fgrlhf/resources/data/{name}" for name in PACKAGED_FILES} <= names


@pytest.mark.slow
def test_env_data_and_demo_first_stage_run_from_a_lone_copy_of_the_package(tmp_path):
    """Only the package directory, copied where nothing is beside it, run from an empty working directory
    with FGRLHF_DATA_DIR unset: ``fgrlhf env-data --env alpaca-sim`` and ``fgrlhf demo --until pairs``."""
    lone = tmp_path / "lone"
    shutil.copytree(PACKAGE, lone / "fgrlhf", ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / "work"
    work.mkdir()
    # The demo's default config lives in the repository's configs/, not in the package: give it one.
    (work / "demo.yaml").write_text(
        textwrap.dedent("""\
        model: tiny
        pair_prompts: 4
        env_data_overrides: [generation.max_new_tokens=4]
    """)
    )
    script = textwrap.dedent(f"""\
        import sys
        import fgrlhf
        from fgrlhf.cli import main
        from fgrlhf.data.loading import ALPACA_EVAL_SET, resolve_data_path
        assert fgrlhf.__file__.startswith({str(lone)!r}), fgrlhf.__file__
        print("EVAL_SET", resolve_data_path(ALPACA_EVAL_SET))
        assert main(["env-data", "--env", "alpaca-sim", "--out", "env", "--n-prompts", "2",
                     "generation.model=tiny", "generation.max_new_tokens=4"]) == 0
        assert main(["demo", "--out", "demo", "--config", "demo.yaml", "--until", "pairs", "--num-cpus", "1"]) == 0
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("FGRLHF_DATA_DIR", "RAY_ADDRESS")}
    env.update(PYTHONPATH=str(lone), OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    eval_set = done.stdout.split("EVAL_SET ", 1)[1].splitlines()[0]
    assert eval_set == str(lone / "fgrlhf" / "resources" / "data" / "alpaca_eval" / "eval_set.jsonl")

    summary = json.loads((work / "env" / "env_data.json").read_text())
    # The 805 packaged instructions, split into train and eval; 2 pairs drawn from the train part.
    assert summary["train_prompts"] + summary["eval_prompts"] == 805 and summary["pairs"] == 2
    assert len((work / "env" / "pairs.jsonl").read_text().splitlines()) == 2
    demo = json.loads((work / "demo" / "pairs" / "env_data.json").read_text())
    assert demo["train_prompts"] + demo["eval_prompts"] == 805 and demo["pairs"] == 4
    assert "stopped after stage pairs" in done.stdout
    assert not (work / "demo" / "edits.jsonl").exists() and not (work / "demo" / "report.json").exists()


@pytest.mark.slow
def test_local_ray_listens_on_loopback_only(ray_session):
    """The module's Ray instance comes from fgrlhf.runtime.distributed.init_local_ray (tests/conftest.py), as the
    commands' own does; every node of it, and a task run on it, reports 127.0.0.1."""
    ray = ray_session

    @ray.remote
    def node_ip() -> str:
        return ray.util.get_node_ip_address()

    assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert [node["NodeManagerAddress"] for node in ray.nodes()] == ["127.0.0.1"]
    assert ray.get(node_ip.remote()) == "127.0.0.1"
    gcs_host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    assert gcs_host == "127.0.0.1"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signals_unwind_with_their_exit_status(sig):
    """SIGTERM/SIGHUP become SystemExit(128 + n), so ``ray_instance``'s ``finally`` shuts Ray down; also when
    Ray's ray.get has turned the SystemExit into SystemExit(1) on the way. The old handlers come back."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    with pytest.raises(SystemExit) as direct, exit_on_termination():
        os.kill(os.getpid(), sig)
        time.sleep(5)
    assert direct.value.code == 128 + sig
    with pytest.raises(SystemExit) as through_ray, exit_on_termination():
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)
        except SystemExit:
            raise SystemExit(1) from None  # what ray.get re-raises
    assert through_ray.value.code == 128 + sig
    assert {s: signal.getsignal(s) for s in before} == before
