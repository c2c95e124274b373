"""`fgrlhf demo` end to end with tiny models: every stage runs, the report holds real numbers, a re-run
resumes without redoing any stage."""

import json
from pathlib import Path

import pytest

from fgrlhf.cli import main as fgrlhf

FIXTURES = Path(__file__).parent / "fixtures"
TINY = [
    "model=tiny",
    "pair_prompts=8",
    "heldout_fraction=0.25",
    "editor=rule",
    "min_edits=2",
    f"edit_rules={FIXTURES / 'demo-rules-tiny.yaml'}",
    "eval_prompts=4",
    "eval_max_new_tokens=8",
    "env_data_overrides=[generation.max_new_tokens=12]",
    "rm_config=configs/rm-token-tiny-cpu.yaml",
    "rm_overrides=[epochs=1]",
    "ppo_config=configs/ppo-tiny-cpu.yaml",
    "ppo_overrides=[steps=1,save_every=0]",
]


@pytest.mark.slow
def test_demo_runs_every_stage_and_resumes(ray_session, tmp_path, capsys):
    out = tmp_path / "demo"
    assert fgrlhf(["demo", "--out", str(out), *TINY]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["pairs"] == 8 and report["heldout_pairs"] == 2 and 2 <= report["edited"] <= 6
    assert report["rm_accuracy"]["n"] == 2 and 0.0 <= report["rm_accuracy"]["accuracy"] <= 1.0
    assert report["ppo_steps"] == 1 and report["ppo_phase_seconds"]["rollout"] > 0
    for label in ("before", "after"):
        assert report[f"winrate_{label}"]["n"] == 4 and 0.0 <= report[f"winrate_{label}"]["win_rate"] <= 100.0
    assert set(report["stage_seconds"]) == {"pairs", "edits", "rm", "rm-eval", "ppo", "winrate-before", "winrate-after"}
    assert "rm_heatmap.html" in report["heatmap"] and all(Path(p).is_file() for p in report["plots"])
    assert "# fgrlhf demo report" in (out / "report.md").read_text()

    capsys.readouterr()
    assert fgrlhf(["demo", "--out", str(out), *TINY]) == 0
    skipped = capsys.readouterr().out
    assert skipped.count("done earlier") == 7


def test_demo_rejects_unknown_key(tmp_path, capsys):
    assert fgrlhf(["demo", "--out", str(tmp_path), "pair_promts=8"]) == 2
    assert "pair_promts" in capsys.readouterr().err


def test_demo_refuses_to_resume_under_other_settings(tmp_path, capsys):
    from fgrlhf.config import dump_config
    from fgrlhf.pipelines.demo import DemoConfig

    dump_config(DemoConfig(pair_prompts=8), tmp_path / "config.yaml")
    assert fgrlhf(["demo", "--out", str(tmp_path), "pair_prompts=16"]) == 2
    assert "pair_prompts" in capsys.readouterr().err


def test_demo_refuses_a_finished_stage_whose_settings_changed(tmp_path, monkeypatch):
    """Each demo stage is keyed by the config slice it depends on: a re-run into the same --out whose stage
    settings changed is refused rather than given the stale output; other changes leave it done, and a run
    directory from before the keys file resumes."""
    import io

    from rich.console import Console

    from fgrlhf.pipelines import demo, stages

    calls = []

    def env_data(*argv, stdout_to_stderr=False):  # the pairs stage's command, without a model
        calls.append(argv[0])
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "pairs.jsonl").write_text("{}\n")

    monkeypatch.setattr(stages, "run_command", env_data)
    text = io.StringIO()
    console = Console(file=text)
    cfg = demo.DemoConfig(pair_prompts=8)

    def pairs_only(config: demo.DemoConfig) -> None:
        with pytest.raises(stages.StoppedAfter):
            demo.run(config, tmp_path, console, until="pairs")

    pairs_only(cfg)
    pairs_only(cfg.model_copy(update={"eval_prompts": 4}))  # only the win-rate stages depend on it
    assert calls == ["env-data"]
    for changed in ({"pair_prompts": 16}, {"env_data_overrides": ["generation.max_new_tokens=12"]}):
        with pytest.raises(stages.StageChanged, match="stage pairs"):
            demo.run(cfg.model_copy(update=changed), tmp_path, console, until="pairs")
    (tmp_path / "stage_keys.json").unlink()
    pairs_only(cfg)
    assert calls == ["env-data"]
    assert "stage 1/7 pairs:" in text.getvalue()
