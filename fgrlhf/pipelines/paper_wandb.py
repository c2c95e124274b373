"""The paper job's optional Weights & Biases log (``wandb.enabled``): imported only when on."""

from __future__ import annotations

from pathlib import Path

from fgrlhf.pipelines.paper_config import PaperConfig

TABLE_2_COLUMNS = ("accuracy", "ci_low", "ci_high", "longer_wins", "shorter_wins", "n")
TABLE_3_COLUMNS = (
    "rm_wall_hours",
    "rm_loop_hours",
    "rm_gpu_hours",
    "ppo_hours_to_best",
    "ppo_gpu_hours_to_best",
    "hours_to_target",
)


class WandbLog:
    """One W&B run per --out: a resubmitted job continues it (the id is kept in DIR/wandb_run_id)."""

    def __init__(self, cfg: PaperConfig, out: Path):
        from fgrlhf.config import ConfigError

        try:
            import wandb
        except ImportError:
            raise ConfigError(
                "wandb.enabled is true but the wandb package is missing: pip install 'fgrlhf[wandb]' "
                "(or set wandb.enabled=false)"
            ) from None
        out.mkdir(parents=True, exist_ok=True)
        id_file = out / "wandb_run_id"
        run_id = id_file.read_text(encoding="utf-8").strip() if id_file.exists() else wandb.util.generate_id()
        id_file.write_text(run_id + "\n", encoding="utf-8")
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            name=cfg.wandb.name,
            id=run_id,
            resume="allow",
            dir=str(out),
            config=cfg.model_dump(mode="json"),
        )

    def stage(self, name: str, seconds: float) -> None:
        self.run.log({f"stage_seconds/{name}": seconds})

    def report(self, report: dict, out: Path) -> None:
        """Tables 1–3 as W&B tables, the token/sequence ratios (to best, to the target) in the summary, the curves
        as an image."""
        table = self.wandb.Table
        t1 = table(columns=["arm", "win_rate", "stderr"])
        for arm, row in report["table_1"].items():
            t1.add_data(arm, row["win_rate"], row["stderr"])
        t2 = table(columns=["rm", "pairs", *TABLE_2_COLUMNS])
        for kind, sets in report["table_2"].items():
            for name, row in sets.items():
                t2.add_data(kind, name, *(row[c] for c in TABLE_2_COLUMNS))
        t3 = table(columns=["arm", *TABLE_3_COLUMNS])
        for arm, row in report["table_3"]["arms"].items():
            t3.add_data(arm, *(row[c] for c in TABLE_3_COLUMNS))
        self.run.log(
            {"table_1": t1, "table_2": t2, "table_3": t3, "curves": self.wandb.Image(str(out / report["plot"]))}
        )
        for key, name in (
            ("ratio_token_over_sequence", "ppo_hours_to_best_token_over_sequence"),
            ("ratio_to_target_token_over_sequence", "ppo_hours_to_target_token_over_sequence"),
        ):
            if report["table_3"].get(key) is not None:
                self.run.summary[name] = report["table_3"][key]
        self.run.finish()
