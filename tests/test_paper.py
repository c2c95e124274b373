"""`fgrlhf paper`: config errors, the dry run (plan verdict, Claude cost, nothing written), and the tiny
profile end to end with the fake Messages server as editor and judge, killed mid-PPO and resumed."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fgrlhf.cli import main as fgrlhf
from tests.helpers import fake_anthropic

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "paper-tiny-cpu.yaml")
KEY = "sk-ant-test-paper"


def alpacafarm_pairs(path: Path, n: int = 32) -> Path:
    """AlpacaFarm's schema (instruction, input, output_1, output_2, preference); every dispreferred output has
    the typo the fake editor fixes ("teh" -> "the"), so each pair gets an edit."""
    with path.open("w", encoding="utf-8") as handle:
        for i in range(n):
            good, bad = (
                f"The answer to question {i} is short and clear.",
                f"Teh answer is teh number {i}, see teh text.",
            )
            pref = 1 + i % 2
            outputs = (good, bad) if pref == 1 else (bad, good)
            record = {
                "instruction": f"Question {i}: what is it?",
                "input": "",
                "output_1": outputs[0],
                "output_2": outputs[1],
            }
            handle.write(json.dumps({**record, "preference": pref}) + "\n")
    return path


@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in (REPO / "configs").glob("paper-*.yaml") if p.name != "paper-cpu-edit-rules.yaml"),
)
def test_every_shipped_paper_profile_loads_and_its_ppo_and_rm_configs_exist(name):
    from fgrlhf.config import load_config
    from fgrlhf.pipelines.paper import repo_file
    from fgrlhf.pipelines.paper_config import PaperConfig

    cfg = load_config(PaperConfig, REPO / "configs" / name, [])
    for path in (cfg.ppo.config, cfg.rm.sequence_config, cfg.rm.token_config):
        assert Path(repo_file(path)).is_file(), path


def test_config_errors_name_the_key(tmp_path, capsys):
    cases = {
        ("ppo.armz=[token]",): "armz",
        ("gold_env=null", "ppo.arms=[oracle_token]"): "gold_env",
        ("gold_env=null",): "eval.judge gold needs gold_env",
        ("editor.kind=file",): "edits_file",
        ("eval.judge=gpt4",): "eval.judge",
        ("splits.rm_pairs=0.9",): "exceeds 1",
        ("ppo.seeds=[1,1]",): "distinct",
    }
    for overrides, named in cases.items():
        assert fgrlhf(["paper", "--config", TINY, "--out", str(tmp_path / "x"), "--dry-run", *overrides]) == 2
        assert named in capsys.readouterr().err, overrides
    assert not (tmp_path / "x").exists()


def test_rms_must_share_a_batch_size(tmp_path, capsys):
    code = fgrlhf(
        [
            "paper",
            "--config",
            TINY,
            "--out",
            str(tmp_path / "x"),
            "--dry-run",
            "rm.token_overrides=[deepspeed.micro_batch_size=2]",
        ]
    )
    assert code == 2
    assert "global batch sizes (4 vs 2)" in capsys.readouterr().err


def test_dry_run_prints_fit_and_claude_cost_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "job"
    claude = ["editor.kind=anthropic", "eval.judge=claude"]
    assert fgrlhf(["paper", "--config", TINY, "--out", str(out), "--dry-run", *claude]) == 0
    text = capsys.readouterr().out
    verdict = text.strip().splitlines()[-1]
    assert verdict.startswith("verdict: fits") and "$" in verdict
    assert text.count("fits: yes") == 5  # two RMs, three PPO arms
    # 16 + 8 pairs edited; judge: 1 drawn order x (4 validation x (1 SFT + 3 arms x 1 checkpoint) + 4 eval x (1 + 3))
    assert "Claude edit: 24 requests" in text
    assert "Claude judge: 32 requests" in text
    both = ["eval.claude.positions=both"]
    assert fgrlhf(["paper", "--config", TINY, "--out", str(out), "--dry-run", *claude, *both]) == 0
    assert "Claude judge: 64 requests" in capsys.readouterr().out  # both orders
    assert not out.exists()


def test_the_paper_profile_fits_8xa100_and_too_small_gpus_do_not(tmp_path, capsys):
    config = str(REPO / "configs" / "paper-llama7b-8xa100.yaml")
    assert fgrlhf(["paper", "--config", config, "--out", str(tmp_path / "p"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "verdict: fits" in text and "ppo job: 8 GPU(s)" in text and "Claude judge:" in text
    assert (
        fgrlhf(["paper", "--config", config, "--out", str(tmp_path / "p"), "--dry-run", "estimate.gpu_memory_gb=24"])
        == 1
    )
    assert "verdict: does NOT fit" in capsys.readouterr().out
    assert not (tmp_path / "p").exists()


@pytest.mark.slow
def test_tiny_profile_killed_mid_ppo_resumes_to_the_report(tmp_path, monkeypatch, one_thread, capsys):
    """The job as a driver process, killed while an arm's second PPO segment runs; the same command again
    skips the finished stages, resumes that arm from its step-1 checkpoint, pays no judge or edit request
    twice, and writes the report with Tables 1-3."""
    out = tmp_path / "paper"
    overrides = [
        f"preference_data={alpacafarm_pairs(tmp_path / 'alpaca_farm_pairs.jsonl')}",
        "editor.kind=anthropic",
        "editor.overrides=[batch.poll_interval_s=0.05,tokenizer=tiny]",
        "eval.judge=claude",
        "ppo.arms=[sequence,token]",
        "ppo.eval_every=1",
    ]
    argv = ["--config", TINY, "--out", str(out), "--num-cpus", "2", *overrides]
    with fake_anthropic(monkeypatch, KEY) as server:
        driver = subprocess.Popen(
            [sys.executable, str(REPO / "ray_jobs" / "paper.py"), *argv],
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
            stdout=(tmp_path / "driver.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        second_segment = out / "ppo" / "sequence-s0" / "resumes.jsonl"  # written as segment 2 resumes step 1
        deadline = time.monotonic() + 900
        while not second_segment.exists() and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
        driver.send_signal(signal.SIGTERM)
        assert driver.wait(timeout=120) != 0
        assert not (out / "report.json").exists()
        sent_before = server.count("ok")

        capsys.readouterr()
        assert fgrlhf(["paper", *argv]) == 0
        printed = capsys.readouterr().out
        ok = [entry.key for entry in server.log if entry.outcome == "ok"]

    for stage in ("data", "edits-train", "rm-sequence", "rm-token", "ppo-sequence-s0-step1"):
        assert f"stage {stage}: done earlier" in printed
    # nothing paid twice: edits and judgements of the killed run come from the caches under --out
    assert sent_before > 0 and len(ok) == len(set(ok))
    steps = [
        json.loads(line)["step"] for line in (out / "ppo" / "sequence-s0" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2]  # resumed from the step-1 checkpoint, not restarted
    report = json.loads((out / "report.json").read_text())
    assert {"table_1", "table_2", "table_3"} <= set(report)
    t3 = report["table_3"]
    for arm in ("sequence", "token"):
        entry = t3["arms"][arm]
        assert entry["ppo_hours_to_best"] > 0 and entry["rm_wall_hours"] > entry["rm_loop_hours"] > 0
        assert 0 <= report["table_1"][arm]["win_rate"] <= 100
    assert t3["ratio_token_over_sequence"] > 0
    assert set(report["table_2"]) == {"sequence", "token"}
    assert "longer_wins" in report["table_2"]["token"]["edit_pairs"]
    assert t3["ratio_to_target_token_over_sequence"] > 0 and set(t3["ratio_to_target_censored"]) == {
        "token",
        "sequence",
    }
    markdown = (out / "report.md").read_text()
    assert "Table 3" in markdown and "PPO hours to the target, token / sequence" in markdown
    assert (out / report["plot"]).is_file()


def test_splits_are_disjoint_and_keep_eval_prompts_out_of_training():
    from fgrlhf.config import load_config
    from fgrlhf.pipelines.paper import make_splits
    from fgrlhf.pipelines.paper_config import PaperConfig

    cfg = load_config(PaperConfig, TINY, [])
    splits = make_splits(cfg)
    assert {name: len(records) for name, records in splits.items()} == {
        "rm_pairs": 16,
        "heldout_pairs": 8,
        "ppo_prompts": 8,
        "validation": 4,
        "eval": 4,
    }
    held = {r["prompt"] for name in ("validation", "eval") for r in splits[name]}
    trained = {r["prompt"] for name in ("rm_pairs", "heldout_pairs", "ppo_prompts") for r in splits[name]}
    assert not held & trained  # the packaged pairs share their prompts with the eval set: those are dropped


def test_ppo_prompts_keep_alpaca_farms_input(tmp_path):
    from fgrlhf.config import load_config
    from fgrlhf.pipelines.paper import make_splits
    from fgrlhf.pipelines.paper_config import PaperConfig

    rows = [
        {"instruction": f"Sum the numbers {i}.", "input": f"{i}, {i + 1}", "output_1": "a", "output_2": "b",
         "preference": 1}
        for i in range(40)
    ]  # fmt: skip
    data = tmp_path / "alpaca_farm.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(PaperConfig, TINY, [f"preference_data={data}"])
    ppo = make_splits(cfg)["ppo_prompts"]
    assert ppo and all(set(r) == {"prompt", "input"} for r in ppo)  # no responses, the input kept
    for record in ppo:  # each prompt keeps its own input
        i = int(record["prompt"].split()[-1].rstrip("."))
        assert record["input"] == f"{i}, {i + 1}"


def test_a_stage_made_from_other_inputs_is_refused(tmp_path):
    from fgrlhf.pipelines.stages import StageChanged, Stages, content_key

    data = tmp_path / "in.txt"
    data.write_text("a")
    out = tmp_path / "out.txt"
    runs = []

    def step() -> None:
        runs.append(1)
        out.write_text("x")

    def stages() -> Stages:
        return Stages(tmp_path / "seconds.json", keys=tmp_path / "keys.json")

    stages().run(out, step, "s", key=content_key({"k": 1}, (data,)))
    stages().run(out, step, "s", key=content_key({"k": 1}, (data,)))
    assert runs == [1]
    data.write_text("b")
    with pytest.raises(StageChanged, match="stage s"):
        stages().run(out, step, "s", key=content_key({"k": 1}, (data,)))


def test_table_3_hours_to_best_ratio_interval_and_target(tmp_path):
    from fgrlhf.config import load_config
    from fgrlhf.pipelines.paper_config import PaperConfig
    from fgrlhf.pipelines.paper_report import run_summary, table_3

    cfg = load_config(PaperConfig, TINY, ["ppo.arms=[sequence,token]", "ppo.seeds=[0,1]"])
    rms = {kind: {"wall_hours": 0.1, "gpu_hours": 0.8, "loop_hours": 0.05} for kind in ("sequence", "token")}
    summaries = []
    for arm, seconds, best in (("sequence", 3600.0, 4), ("token", 1800.0, 2)):
        for seed in (0, 1):
            metrics = tmp_path / f"{arm}-{seed}.jsonl"
            rows = [{"step": s, "step_seconds": seconds * (1 + seed)} for s in range(1, 5)]
            metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
            checkpoints = {s: {"win_rate": 40.0 + (10 if s == best else 0)} for s in (2, 4)}
            run = {"arm": arm, "seed": seed, "metrics": str(metrics), "checkpoints": checkpoints, "best_step": best}
            run["table1"] = {"win_rate": 50.0, "stderr": 2.0}
            summaries.append(run_summary(run, target=45.0, gpus=8))
    t3 = table_3(cfg, rms, summaries)
    # sequence: 4 steps of 1 h (seed 0) / 2 h (seed 1); token: 2 steps of 0.5 h / 1 h
    assert t3["arms"]["sequence"]["ppo_hours_to_best"] == pytest.approx(6.0)
    assert t3["arms"]["token"]["ppo_hours_to_best"] == pytest.approx(1.5)
    assert t3["arms"]["token"]["ppo_gpu_hours_to_best"] == pytest.approx(12.0)
    assert t3["ratio_token_over_sequence"] == pytest.approx(0.25)
    assert t3["ratio_interval_95"] == pytest.approx([0.25, 0.25])  # every seed has the same ratio
    assert t3["ratio_interval_coverage"] == pytest.approx(0.5)  # two seeds: [min, max] covers the median half the time
    assert t3["arms"]["token"]["hours_to_target"] == pytest.approx(1.5)
    assert t3["arms"]["sequence"]["target_reached"] == "2/2" and t3["arms"]["token"]["rm_wall_hours"] == 0.1


def test_table_3_ratio_to_the_target_takes_a_run_short_of_it_as_a_bound(tmp_path):
    from fgrlhf.config import load_config
    from fgrlhf.pipelines.paper_config import PaperConfig
    from fgrlhf.pipelines.paper_report import run_summary, table_3

    cfg = load_config(PaperConfig, TINY, ["ppo.arms=[sequence,token]", "ppo.seeds=[0,1,2]"])
    rms = {kind: {"wall_hours": 0.1, "gpu_hours": 0.8, "loop_hours": 0.05} for kind in ("sequence", "token")}
    # Validation win rates at checkpoints 2 and 4 (1 h a step, target 45): the first checkpoint ≥ 45 is the
    # hours to the target; (42, 40) never reaches it, so that run counts its 4 h as a lower bound.
    curves = {
        ("token", 0): (50, 40),  # 2 h
        ("sequence", 0): (40, 50),  # 4 h: seed 0's ratio 0.5
        ("token", 1): (50, 50),  # 2 h
        ("sequence", 1): (42, 40),  # ≥ 4 h: seed 1's ratio ≤ 0.5, known only to lie in [0, 0.5]
        ("token", 2): (46, 40),  # 2 h
        ("sequence", 2): (45, 50),  # 2 h: seed 2's ratio 1.0
    }
    summaries = []
    for (arm, seed), (early, late) in curves.items():
        metrics = tmp_path / f"{arm}-{seed}.jsonl"
        metrics.write_text("".join(json.dumps({"step": s, "step_seconds": 3600.0}) + "\n" for s in range(1, 5)))
        run = {
            "arm": arm,
            "seed": seed,
            "metrics": str(metrics),
            "checkpoints": {2: {"win_rate": early}, 4: {"win_rate": late}},
        }
        run |= {"best_step": 2 if early >= late else 4, "table1": {"win_rate": 50.0, "stderr": 2.0}}
        summaries.append(run_summary(run, target=45.0, gpus=8))
    t3 = table_3(cfg, rms, summaries)
    assert t3["ratio_to_target_per_seed"] == {"0": 0.5, "1": 0.5, "2": 1.0}
    assert t3["ratio_to_target_token_over_sequence"] == 0.5
    assert t3["ratio_to_target_censored"] == {"token": 0, "sequence": 1}
    # three seeds: [min of the lower ends, max of the upper ends], coverage 1 − 2/8; seed 1's open end is 0
    assert t3["ratio_to_target_interval_95"] == [None, 1.0]
    assert t3["ratio_to_target_interval_coverage"] == pytest.approx(0.75)
    # hours to each run's own best on the same runs: sequence seed 1 stalls at 42 % after 2 h, its "best",
    # so its seed's ratio reads 1.0 there; sequence seed 2 improves past the target, so 0.5
    assert t3["ratio_per_seed"] == {"0": 0.5, "1": 1.0, "2": 0.5}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _session_pids(session: str) -> list[int]:
    """Processes with a file open in the Ray session directory ``session`` (docs/ray_job_submit.md): every
    process of that head, and nothing of another Ray instance."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(str(link.readlink()).startswith(session + "/") for link in (entry / "fd").iterdir()):
                    found.append(int(entry.name))
            except OSError:  # gone, or not ours to read
                continue
    return found


@pytest.fixture
def ray_head(tmp_path):
    """A Ray head of this test's own, every port its own (never `ray stop`: it would end every Ray instance on
    the machine); stopped by the processes of its session directory."""
    ports = {
        "--port": _free_port(),
        "--dashboard-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(),
        "--ray-client-server-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
    }
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
    ray = str(Path(sys.executable).with_name("ray"))
    argv = [ray, "start", "--head", "--num-cpus", "2", "--include-dashboard", "true"]
    argv += [str(part) for flag, port in ports.items() for part in (flag, port)]
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=180)
    session = ""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "gcs_server" in cmd and f"--gcs_server_port={ports['--port']}" in cmd:
            session = next(part for part in cmd.split() if "/tmp/ray/session_" in part)
            session = session[session.index("/tmp/ray/session_") :].split("/")[3]
            session = f"/tmp/ray/{session}"
    assert session, "the head's GCS was not found"
    try:
        yield f"http://127.0.0.1:{ports['--dashboard-port']}", env
    finally:
        pids = _session_pids(session)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(10)
        for pid in _session_pids(session):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_tiny_profile_as_a_ray_job(ray_head, tmp_path):
    """`ray job submit --working-dir . -- python ray_jobs/paper.py ...` against a local cluster writes the
    report; the job's relative --out would be refused, so it is absolute."""
    address, env = ray_head
    out = tmp_path / "paper"
    submit = [str(Path(sys.executable).with_name("ray")), "job", "submit", "--address", address, "--working-dir", "."]
    job = ["--", sys.executable, "ray_jobs/paper.py", "--config", "configs/paper-tiny-cpu.yaml", "--out", str(out)]
    small = ["ppo.arms=[sequence,token]", "ppo.steps=1", "ppo.eval_every=1"]
    done = subprocess.run([*submit, *job, *small], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert {"table_1", "table_2", "table_3"} <= set(report)
    assert report["table_3"]["arms"]["token"]["ppo_hours_to_best"] > 0
    assert "written and read back by 1 node(s)" in done.stdout


def test_rm_judge_prefers_the_output_its_reward_model_scores_higher(tmp_path):
    from fgrlhf.config import ModelConfig
    from fgrlhf.evaluation.judges import build_judge, score_with_reward_model
    from fgrlhf.models import load_tokenizer
    from fgrlhf.trainers.ppo.inputs import save_tiny_reward_model

    rm = tmp_path / "rm"
    save_tiny_reward_model("sequence", ModelConfig(name="tiny"), rm)
    load_tokenizer("tiny").save_pretrained(rm)  # as train-rm saves it beside the model
    prompts, first, second = ["Name a colour.", "Add 2 and 2."], ["Red.", "It is 4."], ["Blue, or green.", "Five."]
    judge = build_judge(f"rm:{rm}", "alpaca-sim", epsilon=0.0)
    scores = score_with_reward_model(str(rm), prompts * 2, first + second)
    verdicts = judge.compare(prompts, first, second)  # Ray is not running here: scored in this process
    for i, verdict in enumerate(verdicts):
        assert verdict.preference == (2.0 if scores[2 + i] > scores[i] else 1.0)
        assert verdict.detail == {"rm_a": scores[i], "rm_b": scores[2 + i]}
    assert judge.name == f"rm:{rm}"


def test_wandb_missing_extra_is_one_error_line_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if the extra were not installed: import fails
    assert fgrlhf(["paper", "--config", TINY, "--out", str(tmp_path / "job"), "wandb.enabled=true"]) == 2
    assert "pip install 'fgrlhf[wandb]'" in capsys.readouterr().err
    assert not (tmp_path / "job" / "data").exists()


def test_wandb_log_continues_one_run_per_out_and_logs_the_tables(tmp_path, monkeypatch):
    import types

    from fgrlhf.config import load_config
    from fgrlhf.pipelines.paper_config import PaperConfig
    from fgrlhf.pipelines.paper_wandb import WandbLog

    calls: dict[str, list] = {"init": [], "log": [], "finish": []}

    class Table:
        def __init__(self, columns):
            self.columns, self.rows = columns, []

        def add_data(self, *row):
            self.rows.append(row)

    run = types.SimpleNamespace(
        log=lambda data: calls["log"].append(data), summary={}, finish=lambda: calls["finish"].append(1)
    )
    fake = types.SimpleNamespace(
        init=lambda **kwargs: calls["init"].append(kwargs) or run,
        util=types.SimpleNamespace(generate_id=lambda: f"id{len(calls['init'])}"),
        Table=Table,
        Image=lambda path: ("image", path),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = load_config(PaperConfig, TINY, ["wandb.enabled=true", "wandb.project=p"])
    WandbLog(cfg, tmp_path)
    log = WandbLog(cfg, tmp_path)  # a resubmitted job: the same W&B run
    assert [c["id"] for c in calls["init"]] == ["id0", "id0"] and calls["init"][0]["resume"] == "allow"
    assert calls["init"][0]["project"] == "p" and calls["init"][0]["config"]["policy"] == "tiny"
    log.stage("data", 1.5)
    arm = dict.fromkeys(("rm_wall_hours", "rm_loop_hours", "rm_gpu_hours", "ppo_hours_to_best"), 0.1)
    report = {
        "table_1": {"token": {"win_rate": 51.2, "stderr": 1.0}},
        "table_2": {"token": {"edit_pairs": {"accuracy": 0.85, "ci_low": 0.8, "ci_high": 0.9, "longer_wins": 0.4,
                                              "shorter_wins": 0.6, "n": 10}}},
        "table_3": {"arms": {"token": {**arm, "ppo_gpu_hours_to_best": 0.8, "hours_to_target": None}},
                    "ratio_token_over_sequence": 0.5, "ratio_to_target_token_over_sequence": 0.7},
        "plot": "plots/curves.png",
    }  # fmt: skip
    log.report(report, tmp_path)
    assert calls["log"][0] == {"stage_seconds/data": 1.5}
    tables = calls["log"][1]
    assert tables["table_1"].rows == [("token", 51.2, 1.0)]
    assert tables["table_2"].rows == [("token", "edit_pairs", 0.85, 0.8, 0.9, 0.4, 0.6, 10)]
    assert tables["table_3"].rows[0][0] == "token" and tables["curves"] == ("image", str(tmp_path / "plots/curves.png"))
    assert run.summary["ppo_hours_to_best_token_over_sequence"] == 0.5 and calls["finish"] == [1]
    assert run.summary["ppo_hours_to_target_token_over_sequence"] == 0.7
