"""The main job's pipeline (``fgrlhf demo``, :mod:`fgrlhf.pipelines.demo_cli`): its config, the stages it chains on one
Ray instance, and the report with its plots.

The stages run on a :class:`~fgrlhf.pipelines.stages.Pipeline` in ``--out``: each keyed by the slice of the config it
depends on and the bytes of its input files (config files included), so a re-run into the same ``--out`` whose
settings or inputs changed under a finished stage is refused rather than given that stage's stale output; one
log line per stage with its ETA and the Ray gauge ``fgrlhf_demo_stage``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from fgrlhf.config import StrictModel
from fgrlhf.data.loading import read_jsonl
from fgrlhf.pipelines.stages import Pipeline

REPO = Path(__file__).resolve().parents[2]
STAGES = ("pairs", "edits", "rm", "rm-eval", "ppo", "winrate-before", "winrate-after")
DEFAULT_CONFIG = REPO / "configs" / "demo-smollm2-cpu.yaml"


def repo_file(path: str) -> str:
    """A config file named relative to the working directory, else to the repository (configs/...)."""
    return path if Path(path).exists() else str(REPO / path)


class DemoConfig(StrictModel):
    """Sizes of each stage; the ``*_overrides`` lists are passed to the stage's command unchanged."""

    model: str = "smollm2"
    pair_prompts: int = Field(64, ge=4, description="train prompts answered twice for preference pairs")
    heldout_fraction: float = Field(0.25, gt=0.0, lt=1.0, description="pairs kept out of RM training")
    editor: Literal["auto", "rule", "anthropic"] = Field(
        "auto", description="auto: Claude when ANTHROPIC_API_KEY is set, else the rule editor"
    )
    edit_rules: str = "configs/edit-rules-alpaca-sim.yaml"
    min_edits: int = Field(4, ge=1, description="fewer edited pairs than this cannot train an RM")
    eval_prompts: int = Field(24, ge=1, description="eval-split instructions for the win rate")
    eval_max_new_tokens: int = Field(96, ge=1)
    ppo_config: str = "configs/ppo-smollm2-cpu.yaml"
    env_data_overrides: list[str] = Field(default_factory=list)
    rm_config: str = "configs/rm-token-smollm2-cpu.yaml"
    rm_overrides: list[str] = Field(default_factory=list)
    ppo_overrides: list[str] = Field(default_factory=list)


def check_resumable(cfg: DemoConfig, out: Path) -> None:
    """Finished stages are reused only under the config that produced them."""
    import yaml

    from fgrlhf.config import ConfigError, dump_config

    saved = out / "config.yaml"
    if saved.exists():
        before = yaml.safe_load(saved.read_text(encoding="utf-8"))
        changed = sorted(key for key, value in cfg.model_dump(mode="json").items() if before.get(key) != value)
        if changed:
            raise ConfigError(
                f"{out} holds a run with other settings ({', '.join(changed)}): "
                "re-run with --fresh, or choose another --out"
            )
    else:
        dump_config(cfg, saved)


def split_pairs(pairs_file: Path, heldout_fraction: float) -> tuple[Path, Path]:
    """Deterministic split of env-data's (already shuffled) pairs into RM-training and held-out files."""
    from fgrlhf.data.loading import load_pairs, write_jsonl

    pairs = load_pairs(pairs_file)
    cut = len(pairs) - max(1, round(len(pairs) * heldout_fraction))
    train, heldout = pairs_file.with_name("pairs_train.jsonl"), pairs_file.with_name("pairs_heldout.jsonl")
    write_jsonl(train, pairs[:cut])
    write_jsonl(heldout, pairs[cut:])
    return train, heldout


def count_edited(edits_file: Path) -> int:
    from fgrlhf.data.loading import load_edit_records

    return len(load_edit_records(edits_file))


def plot_training(out: Path, rm_metrics: Path, ppo_metrics: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    out.mkdir(parents=True, exist_ok=True)
    rm_rows = [r for r in read_jsonl(rm_metrics) if "loss" in r]
    if rm_rows:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["step"] for r in rm_rows], [r["loss"] for r in rm_rows], marker="o")
        ax.set(xlabel="optimizer step", ylabel="token-RM training loss", title="Reward-model training")
        fig.tight_layout()
        fig.savefig(out / "rm_loss.png", dpi=120)
        plt.close(fig)
        written.append(out / "rm_loss.png")
    ppo_rows = read_jsonl(ppo_metrics)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [r["step"] for r in ppo_rows]
    axes[0].plot(steps, [r["reward_mean"] for r in ppo_rows], marker="o", label="token-RM reward")
    if all("gold_reward_mean" in r for r in ppo_rows):
        axes[0].plot(steps, [r["gold_reward_mean"] for r in ppo_rows], marker="s", label="gold reward")
    axes[0].set(xlabel="PPO step", title="Rollout reward")
    axes[0].legend()
    axes[1].plot(steps, [r["kl_mean"] for r in ppo_rows], marker="o")
    axes[1].set(xlabel="PPO step", title="KL to the reference")
    fig.tight_layout()
    fig.savefig(out / "ppo.png", dpi=120)
    plt.close(fig)
    written.append(out / "ppo.png")
    return written


def render_report(report: dict) -> str:
    rm, before, after = report["rm_accuracy"], report["winrate_before"], report["winrate_after"]
    lines = [
        "# fgrlhf demo report",
        "",
        f"Model {report['model']}, alpaca-sim environment, editor `{report['editor']}`; "
        f"{report['pairs']} pairs, {report['edited']} minimally edited, {report['heldout_pairs']} held out.",
        "",
        "| measure | value |",
        "| --- | --- |",
        f"| token-RM accuracy on held-out pairs | {rm['accuracy']:.3f} (95% CI {rm['ci_low']:.3f}–{rm['ci_high']:.3f}, "
        f"n = {rm['n']}) |",
        f"| gold reward before → after PPO | {before['gold_model_mean']:.4f} → {after['gold_model_mean']:.4f} |",
        f"| win rate vs text-davinci-003 before → after (gold judge, n = {after['n']}) | "
        f"{before['win_rate']:.1f} ± {before['stderr']:.1f} → {after['win_rate']:.1f} ± "
        f"{after['stderr']:.1f} |",
        f"| PPO steps | {report['ppo_steps']} |",
        "",
        "| stage | seconds |",
        "| --- | --- |",
        *[f"| {name} | {seconds} |" for name, seconds in report["stage_seconds"].items()],
        "",
        "PPO seconds per phase (mean over steps): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["ppo_phase_seconds"].items()),
        "",
        f"- token-reward heat map: {report['heatmap']}",
        *[f"- plot: {path}" for path in report["plots"]],
    ]
    return "\n".join(lines) + "\n"


def mean_phase_seconds(ppo_metrics: Path) -> dict[str, float]:
    rows = [r["phase_seconds"] for r in read_jsonl(ppo_metrics)]
    return {phase: sum(r.get(phase, 0.0) for r in rows) / len(rows) for phase in rows[0]}


def run(cfg: DemoConfig, out: Path, console, until: str | None = None) -> dict:
    from fgrlhf.config import ConfigError

    editor = cfg.editor
    if editor == "auto":
        editor = "anthropic" if os.environ.get("ANTHROPIC_API_KEY") else "rule"
    pipeline = Pipeline(
        out,
        "fgrlhf_demo_stage",
        len(STAGES),
        say=lambda text: console.print(f"[dim]{text}[/dim]"),
        until=until,
        resume="re-run to resume",
        stdout_to_stderr=False,
        on_start=lambda name: console.rule(f"stage {name}"),
    )

    data_dir = out / "pairs"
    pipeline.command(
        "pairs",
        data_dir / "pairs.jsonl",
        [
            "env-data",
            "--env",
            "alpaca-sim",
            "--out",
            str(data_dir),
            "--n-prompts",
            str(cfg.pair_prompts),
            f"generation.model={cfg.model}",
            *cfg.env_data_overrides,
        ],
        cfg.model_dump(include={"model", "pair_prompts", "env_data_overrides"}),
    )
    train_pairs, heldout_pairs = split_pairs(data_dir / "pairs.jsonl", cfg.heldout_fraction)

    edits = out / "edits.jsonl"
    edit_argv = ["edit", "--input", str(train_pairs), "--output", str(edits), "--editor", editor, "--no-progress"]
    rules = Path(repo_file(cfg.edit_rules))
    if editor == "rule":
        pipeline.command("edits", edits, [*edit_argv, "--rules", str(rules)], {"editor": editor}, (train_pairs, rules))
    else:
        pipeline.command("edits", edits, edit_argv, {"editor": editor}, (train_pairs,))
    edited = count_edited(edits)
    if edited < cfg.min_edits:
        raise ConfigError(
            f"only {edited} of the pairs were edited (min_edits={cfg.min_edits}): raise "
            "pair_prompts or use an LLM editor (editor=anthropic)"
        )

    rm_dir = out / "rm"
    pipeline.command(
        "rm",
        rm_dir / "final" / "config.json",
        [
            "train-rm",
            "--config",
            repo_file(cfg.rm_config),
            "--data",
            str(edits),
            "--kind",
            "token",
            "--model",
            cfg.model,
            "--out",
            str(rm_dir),
            "--resume",
            "eval_fraction=0",
            *cfg.rm_overrides,
        ],
        cfg.model_dump(include={"model", "rm_overrides"}),
        (edits, Path(repo_file(cfg.rm_config))),
    )
    rm_report, heatmap = out / "rm_eval.json", out / "rm_heatmap.html"
    pipeline.command(
        "rm-eval",
        rm_report,
        [
            "eval-rm",
            "--rm",
            str(rm_dir / "final"),
            "--data",
            str(heldout_pairs),
            "--report",
            str(rm_report),
            "--heatmap",
            str(heatmap),
            "--heatmap-k",
            "10",
        ],
        inputs=(heldout_pairs, rm_dir / "final" / "config.json"),
    )

    ppo_dir = out / "ppo"
    pipeline.command(
        "ppo",
        ppo_dir / "final" / "config.json",
        [
            "ppo",
            "--config",
            repo_file(cfg.ppo_config),
            "--out",
            str(ppo_dir),
            "--resume",
            f"policy.name={cfg.model}",
            f"reward.model={rm_dir / 'final'}",
            f"prompts.path={data_dir / 'prompts_train.jsonl'}",
            "ppo.reward_mode=token",
            "gold_reward=fgrlhf.envs.alpaca_sim:gold_reward",
            *cfg.ppo_overrides,
        ],
        cfg.model_dump(include={"model", "ppo_overrides"}),
        (Path(repo_file(cfg.ppo_config)), rm_dir / "final" / "config.json", data_dir / "prompts_train.jsonl"),
    )

    winrate = {}
    for label, model in (("before", cfg.model), ("after", str(ppo_dir / "final"))):
        target = out / f"winrate_{label}"
        pipeline.command(
            f"winrate-{label}",
            target / "winrate.json",
            [
                "winrate",
                "--model",
                model,
                "--judge",
                "gold",
                "--env",
                "alpaca-sim",
                "--n",
                str(cfg.eval_prompts),
                "--max-new-tokens",
                str(cfg.eval_max_new_tokens),
                "--out",
                str(target),
            ],
            cfg.model_dump(include={"model", "eval_prompts", "eval_max_new_tokens"}),
            (ppo_dir / "final" / "config.json",) if label == "after" else (),
        )
        winrate[label] = json.loads((target / "winrate.json").read_text())

    plots = plot_training(out / "plots", rm_dir / "metrics.jsonl", ppo_dir / "metrics.jsonl")
    report = {
        "model": cfg.model,
        "editor": editor,
        "pairs": len(read_jsonl(data_dir / "pairs.jsonl")),
        "heldout_pairs": len(read_jsonl(heldout_pairs)),
        "edited": edited,
        "rm_accuracy": json.loads(rm_report.read_text()),
        "ppo_steps": len(read_jsonl(ppo_dir / "metrics.jsonl")),
        "ppo_phase_seconds": mean_phase_seconds(ppo_dir / "metrics.jsonl"),
        "winrate_before": winrate["before"],
        "winrate_after": winrate["after"],
        "stage_seconds": pipeline.seconds,
        "heatmap": str(heatmap),
        "plots": [str(p) for p in plots],
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_report(report), encoding="utf-8")
    pipeline.finish()
    return report
