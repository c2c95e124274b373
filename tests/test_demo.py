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
