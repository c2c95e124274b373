"""The paper's experiment as one resumable job (``fgrlhf paper``, :mod:`fgrlhf.pipelines.paper_cli`).

data (splits by prompt) → edits → sequence and token RMs (timed) → Table 2 (eval-rm with length baselines) →
the SFT policy's validation win rate, which fixes the time-to-target before any arm runs → PPO arms × seeds,
trained in segments of ``eval_every`` steps (``fgrlhf ppo --resume steps=N``: each segment ends with an HF
export whose answers to the validation and eval prompts are generated, then the next resumes from the
checkpoint) → once every run has trained, each checkpoint's validation answers are judged (a batched Claude
judge sends them as one Message Batches submission, so no GPU waits on a batch) → Table 1 on the best
validation checkpoint of each run → report (:mod:`fgrlhf.pipelines.paper_report`).

Every stage is a step of a :class:`~fgrlhf.pipelines.stages.Pipeline` keyed by a hash of its config slice and
input files, so a resubmitted job skips what is done and refuses to reuse a stage made from other inputs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from fgrlhf.data.loading import read_jsonl, write_jsonl
from fgrlhf.pipelines.paper_config import ARM_RM, PaperConfig
from fgrlhf.pipelines.stages import Pipeline

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[2]
SPLITS = ("rm_pairs", "heldout_pairs", "ppo_prompts", "validation", "eval")


def repo_file(path: str) -> str:
    """A file named relative to the working directory, else to the repository (configs/...)."""
    return path if Path(path).exists() else str(REPO / path)


def rm_overrides(cfg: PaperConfig, kind: str) -> list[str]:
    extra = cfg.rm.sequence_overrides if kind == "sequence" else cfg.rm.token_overrides
    return [f"model.prompt_format={cfg.prompt_format}", *cfg.rm.overrides, *extra]


def ppo_overrides(cfg: PaperConfig, arm: str, seed: int, reward_model: str, prompts: str, steps: int) -> list[str]:
    gold = [f"gold_reward={cfg.gold_hook}"] if cfg.gold_hook else []
    return [
        f"policy.name={cfg.policy}",
        f"policy.prompt_format={cfg.prompt_format}",
        f"reward.model={reward_model}",
        f"prompts.path={prompts}",
        f"ppo.reward_mode={arm}",
        f"seed={seed}",
        f"save_every={cfg.ppo.eval_every}",
        *gold,
        *cfg.ppo.overrides,
        f"steps={steps}",
    ]


def segment_ends(cfg: PaperConfig) -> list[int]:
    """The steps at which each run is checkpointed and evaluated: every K steps and the last."""
    k, steps = cfg.ppo.eval_every, cfg.ppo.steps
    return sorted({*range(k, steps + 1, k), steps})


def rm_configs(cfg: PaperConfig):
    """The two typed train-rm configs; both RMs must train with the same global batch size (Table 3)."""
    from fgrlhf.config import ConfigError, load_config
    from fgrlhf.reward.train import RMTrainConfig

    typed = {
        kind: load_config(RMTrainConfig, repo_file(path), rm_overrides(cfg, kind))
        for kind, path in (("sequence", cfg.rm.sequence_config), ("token", cfg.rm.token_config))
    }
    batches = {kind: c.deepspeed.global_batch_size for kind, c in typed.items()}
    if batches["sequence"] != batches["token"]:
        raise ConfigError(
            f"rm: the sequence and token RMs train with other global batch sizes ({batches['sequence']} vs "
            f"{batches['token']}); Table 3 compares them at the same batch size: set deepspeed.* in rm.overrides"
        )
    return typed


def ppo_config(cfg: PaperConfig, arm: str, reward_model: str, prompts: str):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    return load_config(
        PPOTrainConfig,
        repo_file(cfg.ppo.config),
        ppo_overrides(cfg, arm, cfg.ppo.seeds[0], reward_model, prompts, cfg.ppo.steps),
    )


# --- data -------------------------------------------------------------------------------------------------------
def make_splits(cfg: PaperConfig) -> dict[str, list[dict]]:
    """The five splits, disjoint by prompt (checked): eval-set prompts are split into validation and eval (each
    capped by ``splits.max_*``), and those removed from the preference data before it is split into RM
    pairs, held-out pairs and PPO prompts."""
    from fgrlhf.config import ConfigError
    from fgrlhf.data.loading import load_pairs, load_prompts, load_records
    from fgrlhf.data.splits import check_disjoint, split_by_prompt

    s = cfg.splits
    references = load_records(cfg.eval_set, ("prompt", "reference"), allow_empty=("reference",))
    evals = split_by_prompt(references, {"validation": s.validation, "eval": 1.0 - s.validation}, s.seed)
    evals = {"validation": evals["validation"][: s.max_validation], "eval": evals["eval"][: s.max_eval]}
    taken = {r["prompt"] for records in evals.values() for r in records}  # eval-set prompts left out are free
    pairs = [p for p in load_pairs(cfg.preference_data) if p["prompt"] not in taken][: s.max_pairs]
    fractions = {"rm_pairs": s.rm_pairs, "heldout_pairs": s.heldout_pairs}
    if cfg.ppo_prompts is None:
        if s.ppo_prompts <= 0:
            raise ConfigError("splits.ppo_prompts is 0 and no ppo_prompts file is given: PPO has no prompts")
        fractions["ppo_prompts"] = s.ppo_prompts
    splits = split_by_prompt(pairs, fractions, s.seed)
    if cfg.ppo_prompts is None:
        first: dict[str, dict] = {}  # one record per prompt, in order
        for pair in splits["ppo_prompts"]:
            first.setdefault(pair["prompt"], prompt_record(pair))
        splits["ppo_prompts"] = list(first.values())
    else:
        used = taken | {p["prompt"] for p in pairs}
        splits["ppo_prompts"] = [prompt_record(r) for r in load_prompts(cfg.ppo_prompts) if r["prompt"] not in used]
    splits["ppo_prompts"] = splits["ppo_prompts"][: s.max_ppo_prompts]
    splits.update(evals)
    for name in SPLITS:
        if not splits[name]:
            raise ConfigError(f"split {name} is empty: give more data or change splits.*")
    check_disjoint(splits)
    return splits


def prompt_record(record: dict) -> dict:
    """What PPO needs of a record to render its prompt: the text, AlpacaFarm's ``input`` and a conversation's
    messages (fgrlhf.data.schemas.render_prompt), without the responses."""
    return {key: record[key] for key in ("prompt", "input", "prompt_messages") if record.get(key)}


# --- checkpoint evaluation --------------------------------------------------------------------------------------
def generate(cfg: PaperConfig, policy: str, prompts: list[str]) -> list[str]:
    """Greedy answers of ``policy``: in a Ray task holding ``eval.num_gpus`` GPUs on a cluster (the driver may
    have none); with no GPU asked for, here in the driver, which has torch loaded already."""
    import ray

    from fgrlhf.generation import GenerationSettings

    gen = GenerationSettings(
        max_prompt_tokens=cfg.eval.max_prompt_tokens,
        max_new_tokens=cfg.eval.max_new_tokens,
        batch_size=cfg.eval.batch_size,
    ).model_dump()
    if not cfg.eval.num_gpus:
        return _generate(policy, cfg.prompt_format, prompts, gen)
    task = ray.remote(num_cpus=cfg.eval.num_cpus, num_gpus=cfg.eval.num_gpus)(_generate)
    return ray.get(task.remote(policy, cfg.prompt_format, prompts, gen))


def _generate(policy: str, prompt_format: str, prompts: list[str], gen: dict) -> list[str]:
    from fgrlhf.config import ModelConfig
    from fgrlhf.generation import GenerationSettings, generate_batched

    return generate_batched(ModelConfig(name=policy, prompt_format=prompt_format), prompts, GenerationSettings(**gen))


def build_judge(cfg: PaperConfig, out: Path):
    from fgrlhf.evaluation.judges import build_judge as build

    claude = cfg.eval.claude
    if cfg.eval.judge == "claude" and claude.cache == type(claude)().cache:
        claude = claude.model_copy(update={"cache": str(out / "judge_cache.sqlite")})  # travels with --out
    return build(
        cfg.eval.judge,
        cfg.gold_env or "alpaca-sim",
        cfg.eval.epsilon,
        claude,
        rm_resources={"num_gpus": cfg.eval.num_gpus, "num_cpus": cfg.eval.num_cpus},
    )


def judge_settings(cfg: PaperConfig) -> list:
    """What a judgement depends on besides the answers (its stage key)."""
    claude = cfg.eval.claude
    return [cfg.eval.judge, cfg.eval.epsilon, claude.model, claude.max_tokens, claude.positions]


def judge_file(judge, outputs: Path, target: Path) -> None:
    """Win rate (± s.e.) of the answers in ``outputs`` against their references, written to ``target``."""
    from fgrlhf.algorithms.winrate import win_rate

    rows = read_jsonl(outputs)
    verdicts = judge.compare(
        [r["prompt"] for r in rows], [r["reference"] for r in rows], [r["output"] for r in rows]
    )  # a = reference, b = model: preference 2 = the model wins (AlpacaEval)
    result = win_rate([v.preference for v in verdicts])
    result["judge"] = judge.name
    result["response_words_mean"] = sum(len(r["output"].split()) for r in rows) / len(rows)
    if judge.summary():
        result["judge_usage"] = judge.summary()
    _write_json(target, result)


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def gpus_of_rm(typed) -> float:
    ds = typed.deepspeed
    return ds.world_size * ds.num_gpus_per_rank


def gpus_of_ppo(typed) -> float:
    from fgrlhf.runtime.placement import ppo_placement

    return ppo_placement(typed).num_gpus


# --- the job ----------------------------------------------------------------------------------------------------
class PaperJob:
    """The stages of one experiment in ``out``; :meth:`run` runs (or skips) each and writes the report."""

    def __init__(self, cfg: PaperConfig, out: Path, say=log.info, wandb=None):
        self.cfg, self.out, self.say, self.wandb = cfg, out, say, wandb
        self.data = out / "data"
        self.pipeline = Pipeline(
            out,
            "fgrlhf_paper_stage",
            self.planned_stages(),
            say=say,
            resume="resubmit with the same --out",
            on_done=wandb.stage if wandb is not None else None,
        )

    def planned_stages(self) -> int:
        runs = len(self.cfg.ppo.arms) * len(self.cfg.ppo.seeds)
        return 13 + runs * (3 * len(segment_ends(self.cfg)) + 1)

    def run(self) -> dict:
        from fgrlhf.pipelines.paper_report import write_report

        cfg = self.cfg
        splits = self.stage_data()
        edits = self.stage_edits(splits)
        rms = {
            kind: self.stage_rm(kind, data)
            for kind, data in (("sequence", splits["rm_pairs"]), ("token", edits["train"]))
        }
        table2 = self.stage_table2(rms, splits["heldout_pairs"], edits["heldout"])
        judge = build_judge(cfg, self.out)
        initial = self.stage_evaluate("sft", cfg.policy, splits, judge, self.out / "evals" / "sft")
        target = self.out / "target.json"
        self.pipeline.stage(
            target,
            lambda: _write_json(
                target,
                {
                    "rule": f"SFT policy's validation win rate + {cfg.target.delta:g} points, fixed before any arm",
                    "initial_win_rate": json.loads(initial.read_text())["win_rate"],
                    "target_win_rate": json.loads(initial.read_text())["win_rate"] + cfg.target.delta,
                },
            ),
            "target",
            cfg.target.model_dump(),
            (initial,),
        )
        sft_eval = self.out / "evals" / "sft" / "eval.json"
        sft_outputs = self.out / "evals" / "sft" / "outputs.jsonl"
        self.pipeline.stage(
            sft_eval,
            lambda: judge_split(judge, sft_outputs, "eval", sft_eval),
            "table1-sft",
            judge_settings(cfg),
            (sft_outputs,),
        )
        trained = {}
        for seed in cfg.ppo.seeds:  # seed-major: load on the machine hits the arms alike
            for arm in cfg.ppo.arms:
                trained[f"{arm}-s{seed}"] = self.train_arm(arm, seed, rms[ARM_RM[arm]], splits)
        # Judged after every arm trained, so a batched judge sends each split's comparisons as one batch rather
        # than holding the GPUs idle while a batch per checkpoint completes.
        prejudge(
            judge,
            [where / "outputs.jsonl" for run in trained.values() for where in run["evals"].values()],
            "validation",
        )
        best = {name: self.best_checkpoint(name, run, judge) for name, run in trained.items()}
        prejudge(judge, [trained[name]["evals"][step] / "outputs.jsonl" for name, step in best.items()], "eval")
        runs = {name: self.table1_entry(name, run, best[name], judge) for name, run in trained.items()}
        ppo_gpus = gpus_of_ppo(
            ppo_config(cfg, cfg.ppo.arms[0], rms[ARM_RM[cfg.ppo.arms[0]]]["final"], str(splits["ppo_prompts"]))
        )
        report = write_report(
            self.out,
            cfg,
            rms=rms,
            table2=table2,
            target=target,
            sft=json.loads(sft_eval.read_text()),
            runs=runs,
            ppo_gpus=ppo_gpus,
        )
        self.pipeline.finish()
        if self.wandb is not None:
            self.wandb.report(report, self.out)
        return report

    def stage_data(self) -> dict[str, Path]:
        files = {name: self.data / f"{name}.jsonl" for name in SPLITS}
        summary = self.data / "splits.json"

        def step() -> None:
            splits = make_splits(self.cfg)
            for name, records in splits.items():
                write_jsonl(files[name], records)
            _write_json(summary, {name: len(records) for name, records in splits.items()})

        inputs = tuple(
            Path(repo_data(p)) for p in (self.cfg.preference_data, self.cfg.eval_set, self.cfg.ppo_prompts) if p
        )
        key = [self.cfg.splits.model_dump(), self.cfg.preference_data, self.cfg.eval_set, self.cfg.ppo_prompts]
        self.pipeline.stage(summary, step, "data", key, inputs)
        return files

    def stage_edits(self, splits: dict[str, Path]) -> dict[str, Path]:
        ed = self.cfg.editor
        out = {"train": self.data / "edits.jsonl", "heldout": self.data / "heldout_edits.jsonl"}
        for which, source in (("train", splits["rm_pairs"]), ("heldout", splits["heldout_pairs"])):
            if ed.edits_file is not None:  # editor.kind file
                edits_file = ed.edits_file
                prompts = {r["prompt"] for r in read_jsonl(source)}

                def step(target: Path = out[which], prompts: set[str] = prompts, edits_file: str = edits_file) -> None:
                    from fgrlhf.data.loading import load_records

                    records = load_records(
                        edits_file, ("prompt", "original", "edited", "status"), allow_empty=("edited",)
                    )
                    write_jsonl(target, [r for r in records if r["prompt"] in prompts])

                self.pipeline.stage(out[which], step, f"edits-{which}", ed.model_dump(), (source, Path(edits_file)))
                continue
            argv: list[object] = [
                "edit",
                "--input",
                source,
                "--output",
                out[which],
                "--editor",
                ed.kind,
                "--no-progress",
            ]
            argv += ["--cache", self.data / "edit_cache.sqlite"]
            argv += ["--batch"] if ed.kind == "anthropic" and ed.batch else []
            argv += ["--model", ed.model] if ed.model else []
            argv += ["--rules", repo_file(ed.rules)] if ed.rules else []
            rules = (Path(repo_file(ed.rules)),) if ed.rules else ()
            self.pipeline.command(
                f"edits-{which}", out[which], [*argv, *ed.overrides], ed.model_dump(), (source, *rules)
            )
        return out

    def stage_rm(self, kind: str, data: Path) -> dict:
        """train-rm, timed: wall hours (actor start-up included) and GPU-hours (wall × the job's GPUs)."""
        cfg = self.cfg
        typed = rm_configs(cfg)[kind]
        run_dir = self.out / "rm" / kind
        timing = run_dir / "timing.json"
        config = repo_file(cfg.rm.sequence_config if kind == "sequence" else cfg.rm.token_config)

        def step() -> None:
            began = time.perf_counter()
            self.pipeline.run_command(
                "train-rm", "--config", config, "--data", data, "--kind", kind, "--model", cfg.policy,
                "--out", run_dir, "--resume", *rm_overrides(cfg, kind),
            )  # fmt: skip
            hours = (time.perf_counter() - began) / 3600
            gpus, batch = gpus_of_rm(typed), typed.deepspeed.global_batch_size
            steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "examples_per_s" in r]
            _write_json(
                timing,
                {
                    "kind": kind,
                    "global_batch_size": batch,
                    "steps": len(steps),
                    "wall_hours": hours,
                    "gpus": gpus,
                    "gpu_hours": hours * gpus,
                    # the optimizer steps alone, without Ray's and DeepSpeed's start-up (a first stage pays more)
                    "loop_hours": sum(batch / r["examples_per_s"] for r in steps) / 3600,
                },
            )

        self.pipeline.stage(
            timing, step, f"rm-{kind}", [kind, cfg.policy, Path(config).read_text(), rm_overrides(cfg, kind)], (data,)
        )
        return {**json.loads(timing.read_text()), "final": str(run_dir / "final")}

    def stage_table2(self, rms: dict[str, dict], heldout: Path, heldout_edits: Path) -> dict:
        """Both RMs on held-out original pairs and held-out edit pairs; eval-rm adds the length baselines."""
        sets = {"original_pairs": heldout}
        if any(r["status"] == "edited" for r in read_jsonl(heldout_edits)):  # eval-rm needs one edit pair
            sets["edit_pairs"] = heldout_edits
        results: dict = {}
        for kind, rm in rms.items():
            for name, data in sets.items():
                report = self.out / "table2" / f"{kind}-{name}.json"
                argv = ["eval-rm", "--rm", rm["final"], "--data", data, "--report", report]
                self.pipeline.command(
                    f"table2-{kind}-{name}", report, argv, [kind, name], (data, Path(rm["final"]) / "config.json")
                )
                results.setdefault(kind, {})[name] = json.loads(report.read_text())
        return results

    def stage_evaluate(self, name: str, policy: str, splits: dict[str, Path], judge, where: Path) -> Path:
        """A policy's answers on the validation and eval prompts, and its validation win rate."""
        self.stage_answers(name, policy, splits, where)
        return self.stage_judge(name, judge, where)

    def stage_answers(self, name: str, policy: str, splits: dict[str, Path], where: Path) -> Path:
        outputs = where / "outputs.jsonl"

        def answer() -> None:
            records = [{**r, "split": split} for split in ("validation", "eval") for r in read_jsonl(splits[split])]
            texts = generate(self.cfg, policy, [r["prompt"] for r in records])
            write_jsonl(outputs, [{**r, "output": t} for r, t in zip(records, texts)])

        key = [policy, self.cfg.eval.model_dump(exclude={"judge", "claude", "epsilon"}), self.cfg.prompt_format]
        return self.pipeline.stage(outputs, answer, f"answers-{name}", key, (splits["validation"], splits["eval"]))

    def stage_judge(self, name: str, judge, where: Path) -> Path:
        """The validation win rate of the answers in ``where``."""
        outputs, validation = where / "outputs.jsonl", where / "validation.json"
        return self.pipeline.stage(
            validation,
            lambda: judge_split(judge, outputs, "validation", validation),
            f"judge-{name}",
            judge_settings(self.cfg),
            (outputs,),
        )

    def train_arm(self, arm: str, seed: int, rm: dict, splits: dict[str, Path]) -> dict:
        """One PPO run in segments of ``eval_every`` steps, each ending with the policy's answers."""
        cfg = self.cfg
        name = f"{arm}-s{seed}"
        run_dir = self.out / "ppo" / name
        config = repo_file(cfg.ppo.config)
        evals = {}
        for end in segment_ends(cfg):
            where = self.out / "evals" / name / f"step_{end}"  # beside, not inside, the ppo run directory
            overrides = ppo_overrides(cfg, arm, seed, rm["final"], str(splits["ppo_prompts"]), end)

            def train(overrides: list[str] = overrides, done: Path = where / "trained", end: int = end) -> None:
                self.pipeline.run_command("ppo", "--config", config, "--out", run_dir, "--resume", *overrides)
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(f"{end}\n", encoding="utf-8")

            key = [Path(config).read_text(), overrides]
            self.pipeline.stage(
                where / "trained",
                train,
                f"ppo-{name}-step{end}",
                key,
                (splits["ppo_prompts"], Path(rm["final"]) / "config.json"),
            )
            self.stage_answers(f"{name}-step{end}", str(run_dir / "final"), splits, where)
            evals[end] = where
        return {"arm": arm, "seed": seed, "metrics": str(run_dir / "metrics.jsonl"), "evals": evals}

    def best_checkpoint(self, name: str, run: dict, judge) -> int:
        """Judges each checkpoint's validation answers; the step with the best win rate (ties: the earlier)."""
        run["checkpoints"] = {
            end: json.loads(self.stage_judge(f"{name}-step{end}", judge, where).read_text())
            for end, where in run["evals"].items()
        }
        return max(run["checkpoints"], key=lambda step: (run["checkpoints"][step]["win_rate"], -step))

    def table1_entry(self, name: str, run: dict, best: int, judge) -> dict:
        """Table 1: the best validation checkpoint's win rate on the eval split (never selected on)."""
        table1 = self.out / "evals" / name / f"table1-step{best}.json"  # a longer run may pick another best
        outputs = run["evals"][best] / "outputs.jsonl"
        self.pipeline.stage(
            table1,
            lambda: judge_split(judge, outputs, "eval", table1, extra={"best_step": best}),
            f"table1-{name}-step{best}",
            [*judge_settings(self.cfg), best],
            (outputs,),
        )
        return {
            "arm": run["arm"],
            "seed": run["seed"],
            "metrics": run["metrics"],
            "checkpoints": run["checkpoints"],
            "best_step": best,
            "table1": json.loads(table1.read_text()),
        }


def prejudge(judge, outputs: list[Path], split: str) -> None:
    """Fill a batched Claude judge's cache with every comparison of ``split`` in ``outputs`` in one Message
    Batches submission; the per-checkpoint judge stages then read the cache. Other judges judge per stage."""
    from fgrlhf.evaluation.judges import ClaudeJudge

    if not (isinstance(judge, ClaudeJudge) and judge.cfg.batch):
        return
    rows = [r for path in outputs if path.exists() for r in read_jsonl(path) if r["split"] == split]
    if rows:
        judge.compare([r["prompt"] for r in rows], [r["reference"] for r in rows], [r["output"] for r in rows])


def judge_split(judge, outputs: Path, split: str, target: Path, extra: dict | None = None) -> None:
    rows = [r for r in read_jsonl(outputs) if r["split"] == split]
    part = target.with_name(target.stem + f".{split}.jsonl")
    write_jsonl(part, rows)
    judge_file(judge, part, target)
    if extra:
        _write_json(target, {**json.loads(target.read_text()), **extra})


def repo_data(path: str) -> str:
    from fgrlhf.data.loading import resolve_data_path

    return str(resolve_data_path(path))
