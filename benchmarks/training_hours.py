"""Table 3 of 2406.02756: RM training time, and PPO steps / wall-clock to a fixed gold-reward target per reward type.

  python benchmarks/training_hours.py [--env balanced] [--quick] [--seeds 0 1 2 3 4] [--max-steps N] [--window W]
                                      [--target G | --target-delta D | --target-fraction 0.5]
                                      [--calibration-seed 100] [--calibration-steps N] [--plateau-steps 10]
                                      [--initial-samples 512] [--finegrained-loss eq3] [--ppo KEY=VALUE ...]
                                      [--variants sequence fine_grained_sequence token oracle_sequence ...]
                                      [--edit-rules FILE] [--workdir DIR] [--json OUT.json] [--plot OUT.png]

RMs (benchmarks/common.py pipeline), one pair per seed (RM seed = PPO seed, so RM variance is inside the
per-seed spread): a sequence-level RM (Bradley–Terry) on the env's original
pairs, and the token RM on the rule-edited data (the annotator that also fixes global faults,
configs/edit-rules-synthetic-global.yaml, by default), trained with Eq. 3 (``--finegrained-loss eq3``, the
default; Eq. 4 is not invariant to a constant shift of the token rewards, BENCHMARKS.md Table 2). PPO arms,
all from the same initial policy (the synthetic env's SFT policy) with the same hyper-parameters
(configs/ppo-synthetic-cpu.yaml + the full/quick settings below + any ``--ppo`` overrides, for every arm):

- ``sequence``: the original-pair RM, reward at EOS (the paper's PPO-RLHF baseline);
- ``fine_grained_sequence``: the edit RM's mean r_t as a sequence reward;
- ``token``: the edit RM's per-token rewards (the paper's fine-grained PPO; centred on the batch);
- ``oracle_sequence``: the env's gold reward at EOS;
- ``oracle_token``: the gold telescoped over prefixes, r_t = g(y≤t) − g(y<t): the same return as
  ``oracle_sequence`` with the credit spread over the tokens. With γ = λ = 1 (AlpacaFarm) the advantage
  then differs from ``oracle_sequence``'s only by −g(y<t), a function of the state, i.e. a baseline;
- ``oracle_sequence_lam095`` / ``oracle_token_lam095``: the same pair with GAE λ = 0.95, where dense
  rewards can change which tokens get the credit.
The oracle arms isolate what dense credit assignment buys, apart from RM quality (their critic starts from
the sequence RM's backbone). KL: every arm, token arms included, is shaped by −β·KL_t with the config's
estimator and β; the paper's literal [R1..Rn] would be β = 0 (not run: it doubles the budget).

Rule, fixed before the comparison runs:
1. initial gold = mean gold of ``--initial-samples`` rollouts of the initial policy (the PPO prompts and
   sampling settings); its per-response sd predicts the noise of the smoothed gold: sd / √(batch · window);
2. calibration: ``oracle_sequence`` on a separate seed (``--calibration-seed``, never a comparison seed) for
   ``--calibration-steps`` steps; plateau = mean gold of its last ``--plateau-steps`` steps;
3. target = initial + ``--target-fraction`` × (plateau − initial) (``--target`` / ``--target-delta`` replace
   steps 2-3).
The window: ``--window``, or by default the smallest from 5 (``--quick``: 2) up to a third of ``--max-steps``
whose predicted noise meets the rule below, fixed from the noise and margin alone before any comparison run.
Determinability, enforced: the run stops, with the failing figure, before any comparison arm unless the
smoothed gold's noise is under a third of the margin (target − initial) and every ``oracle_sequence`` seed
(run first) reaches the target (``--quick`` reports both without stopping). The other runs go seed-major
(seed 0: every arm, then seed 1, ...) so machine load hits the arms alike. Every run goes the whole
``--max-steps`` budget, and two measures are read off its trailing ``--window``-step mean of the rollouts'
gold (step 1 samples the initial policy), each as steps and PPO loop seconds (sum of ``step_seconds``; actor
start-up excluded):
- steps to the run's own best smoothed gold within the budget (the paper's measure; never censored):
  ``ratio_steps_to_best_*`` / ``ratio_seconds_to_best_*``;
- time to the pre-registered target; a run that never reaches it is censored at ``--max-steps``. Medians
  with half or more runs censored are lower bounds and flagged; a ratio of a bound is reported as a bound
  (or not at all when both sides are): ``ratio_steps_*`` / ``ratio_wallclock_*``.
Every ratio comes with its per-seed values (seeds paired) and an exact sign-test / order-statistic interval
for their median (:func:`sign_test_interval`): with 5 seeds it is [min, max] of the per-seed ratios, coverage
93.75 %; a censored run turns its seed's ratio into a bound, whose open end enters the interval. No
bootstrap: on 5 values a percentile bootstrap of the median sits on the sample's own order statistics.
Every finished stage (data, RM, PPO run, eval) is cached in the work dir, so an interrupted command
continues where it stopped; an ETA for what is not cached yet is printed at the start.
Table 1 from the same runs: each final policy answers the env's eval split and the gold judge compares
it with the env's reference (fgrlhf.evaluation.winrate); win rates pool the seeds of an arm. Twice: greedy answers
(``table1``), and ``eval_samples`` answers per prompt sampled as in the rollouts (temperature and top-p of
the PPO config; ``table1_sampled``), the distribution PPO optimised and the target was measured on. A
prompt's sampled preferences are averaged first, so the s.e. is over prompts × seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

from benchmarks.common import (
    ROOT,
    SIZES,
    add_common_arguments,
    default_workdir,
    finish,
    fmt,
    portable,
    prepare_data,
    pyplot,
    ray_session,
    read_jsonl,
    save_figure,
    train_rm,
    write_json,
)
from fgrlhf.algorithms.intervals import censored_ratio, open_ends_as_null, sign_test_interval
from fgrlhf.pipelines.stages import Pipeline

log = logging.getLogger("benchmarks.training_hours")

PPO_CONFIG = {
    "synthetic": ROOT / "configs/ppo-synthetic-cpu.yaml",
    "balanced": ROOT / "configs/ppo-synthetic-cpu.yaml",  # the same grammar and policy; the gold is overridden
    "alpaca-sim": ROOT / "configs/ppo-smollm2-cpu.yaml",
}
GOLD_HOOK = {
    "synthetic": "fgrlhf.envs.synthetic:gold_reward",
    "balanced": "fgrlhf.envs.balanced:gold_reward",
    "alpaca-sim": "fgrlhf.envs.alpaca_sim:gold_reward",
}
# RM name -> (kind, training data, train-rm overrides, loss); the token RMs are rm_accuracy.py's fine-grained
# RMs of the same names (shared work dir).
RMS = {
    "sequence-original": ("sequence", "pairs", (), "Bradley–Terry on pairs"),
    "token-finegrained": ("token", "edits", (), "Eq. 4 on edits"),
    "token-finegrained_eq3": ("token", "edits", ("loss=eq3",), "Eq. 3 on edits"),
}
FINEGRAINED_RM = {"eq3": "token-finegrained_eq3", "eq4": "token-finegrained"}


@dataclass(frozen=True)
class Arm:
    rm: str  # RM name, or "finegrained" for the --finegrained-loss RM
    mode: str  # ppo.reward_mode
    overrides: tuple[str, ...] = ()  # on top of the settings every arm shares


LAMBDA_PAIR = ("ppo.lam=0.95",)
VARIANTS = {
    "sequence": Arm("sequence-original", "sequence"),
    "fine_grained_sequence": Arm("finegrained", "fine_grained_sequence"),
    "token": Arm("finegrained", "token"),
    # the oracle arms' reward is the gold; the sequence RM only initialises their critic
    "oracle_sequence": Arm("sequence-original", "oracle_sequence"),
    "oracle_token": Arm("sequence-original", "oracle_token"),
    "oracle_sequence_lam095": Arm("sequence-original", "oracle_sequence", LAMBDA_PAIR),
    "oracle_token_lam095": Arm("sequence-original", "oracle_token", LAMBDA_PAIR),
}
# ratio key -> (numerator arm, denominator arm)
PAIRS = {
    "token_vs_sequence": ("token", "sequence"),
    "oracle_token_vs_oracle_sequence": ("oracle_token", "oracle_sequence"),
    "oracle_token_lam095_vs_oracle_sequence_lam095": ("oracle_token_lam095", "oracle_sequence_lam095"),
}
PAPER_HOURS = {"rm": {"sequence": 0.2, "token": 0.3}, "ppo": {"sequence": 4.0, "token": 2.0}}

DEFAULT_VARIANTS = (
    "sequence",
    "fine_grained_sequence",
    "token",
    "oracle_sequence",
    "oracle_token",
    "oracle_sequence_lam095",
    "oracle_token_lam095",
)
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
# The default window grows from the preset's until the smoothed gold meets the noise rule, at most to a third
# of the step budget (a wider one would blur where in the run the best comes).
AUTO_WINDOW_MAX_FRACTION = 3
PRIOR_SECONDS_PER_STEP = 8.0  # the ETA's guess until the calibration measures it (batch 32, idle 2 cores)
# Settings every arm shares, on top of the config, planned by arithmetic for 2 idle CPU cores:
# - noise: the initial policy's gold has a per-response sd of 0.12-0.19 (SFT policy rollouts; 0.23 for the
#   generator), so a 32-rollout batch and a 5-step window give a smoothed-gold sd of ≤ 0.19 / √160 ≈ 0.015,
#   under a third of margins ≥ 0.045 (the determinability rule, enforced before the comparison arms);
# - budget: every run goes the whole budget (the paper's measure, steps to the run's own best smoothed gold,
#   needs the full curve; time to target is read off the same curve). Calibration 24 + 5 seeds × 7 arms ×
#   24 = 864 PPO steps at ~8 s a step (batch 32) ≈ 115 min, plus ~20 min of data, 10 RMs (one pair per
#   seed), actor start-up (~20 s a run) and win-rate evals: ≤ 150 min on an idle machine. The ETA printed
#   at the start redoes this sum for the runs not yet cached.
FULL = {
    "ppo": ("ppo.rollout_batch_size=32", "ppo.step_batch_size=16", "save_every=0"),
    "max_steps": 24,
    "window": 5,
    "plateau_steps": 10,
    "initial_samples": 512,
    "eval_n": None,
    "eval_samples": 8,
}
QUICK = {
    "ppo": ("ppo.rollout_batch_size=8", "ppo.step_batch_size=4", "rollout.max_new_tokens=24", "save_every=0"),
    "max_steps": 3,
    "window": 2,
    "plateau_steps": 2,
    "initial_samples": 16,
    "eval_n": 8,
    "eval_samples": 2,
}


# --- pure bookkeeping (unit-tested) ------------------------------------------------------------------------
def moving_average(values: list[float], window: int) -> list[float | None]:
    """Trailing mean of ``window`` values; None until a full window exists."""
    return [statistics.fmean(values[i + 1 - window : i + 1]) if i + 1 >= window else None for i in range(len(values))]


def time_to_target(records: list[dict], target: float, window: int) -> dict:
    """First step whose trailing ``window``-step mean gold is ≥ ``target`` (else the last step, censored),
    the PPO loop seconds up to it, and where the run ended (means over its last ``window`` steps)."""
    gold = [r["gold_reward_mean"] for r in records]
    seconds, total = [], 0.0
    for r in records:
        total += r["step_seconds"]
        seconds.append(total)
    smoothed = moving_average(gold, window)
    hit = next((i for i, v in enumerate(smoothed) if v is not None and v >= target), None)
    last = len(records) - 1
    tail = records[-window:]
    return {
        "reached": hit is not None,
        "steps": (hit if hit is not None else last) + 1,
        "seconds": seconds[hit if hit is not None else last],
        "max_steps": len(records),
        "initial_gold": gold[0],
        "final_gold_ma": smoothed[-1],
        "final_kl": statistics.fmean(r.get("kl_k1_seq_mean", r.get("kl_seq_mean", math.nan)) for r in tail),
        "final_response_len": statistics.fmean(r["response_len_mean"] for r in tail),
        "curve": {
            "step": [r["step"] for r in records],
            "seconds": seconds,
            "gold": gold,
            "gold_ma": smoothed,
            "kl": [r.get("kl_k1_seq_mean", r.get("kl_seq_mean")) for r in records],
            "response_len": [r["response_len_mean"] for r in records],
        },
    }


def summarise_variant(runs: list[dict]) -> dict:
    out: dict = {"runs": len(runs), "reached": sum(r["reached"] for r in runs)}
    out["censored"] = len(runs) - out["reached"]
    # The median is a censored value (a lower bound) once half or more runs never reached the target.
    out["median_is_lower_bound"] = 2 * out["censored"] >= len(runs)
    # Where each run ended: a run that over-optimises its RM shows up here even when none reaches the target.
    for key in ("final_gold_ma", "final_kl", "final_response_len"):
        values = [r[key] for r in runs if key in r]
        if values:
            out[f"median_{key}"] = statistics.median(values)
    for key in ("steps", "seconds"):
        values = sorted(r[key] for r in runs)
        out[f"median_{key}"] = statistics.median(values)
        out[f"min_{key}"], out[f"max_{key}"] = values[0], values[-1]
    return out


def ratio(token: dict, sequence: dict, key: str) -> tuple[float | None, str]:
    """median numerator / median denominator arm, and whether that is exact or a bound (None when undetermined)."""
    value = token[f"median_{key}"] / sequence[f"median_{key}"]
    token_bound, sequence_bound = token["median_is_lower_bound"], sequence["median_is_lower_bound"]
    if token_bound and sequence_bound:
        return None, "undetermined: both medians censored"
    if token_bound:
        return value, "lower bound: numerator median censored"
    if sequence_bound:
        return value, "upper bound: denominator median censored"
    return value, "exact"


INTERVAL_METHOD = (
    "median of the per-seed ratios (seeds paired); interval: exact sign-test / order-statistic interval "
    "[x_(k), x_(n+1-k)] on the per-seed ratios, coverage 1 − 2·P(Bin(n, ½) < k) (93.75 % for 5 seeds, k = 1); "
    "a censored run makes its seed's ratio a bound, whose open end (0 or ∞, null in JSON) enters the interval"
)


def steps_to_best(records: list[dict], window: int) -> dict:
    """The paper's measure: the first step at which the run's trailing ``window``-step mean gold reaches its
    own maximum within the budget, the PPO loop seconds up to it, and that best smoothed gold."""
    smoothed = moving_average([r["gold_reward_mean"] for r in records], window)
    valid = [i for i, v in enumerate(smoothed) if v is not None]
    if not valid:
        raise ValueError(f"{len(records)} steps: no full {window}-step window")
    best = max(valid, key=lambda i: (smoothed[i], -i))
    return {
        "steps_to_best": best + 1,
        "seconds_to_best": sum(r["step_seconds"] for r in records[: best + 1]),
        "best_gold_ma": smoothed[best],
    }


def smoothed_noise(sd_response: float, batch: int, window: int) -> float:
    """sd of a ``window``-step mean of batch-mean golds of a fixed policy: sd / √(batch · window)."""
    return sd_response / math.sqrt(batch * window)


def auto_window(sd_response: float, batch: int, margin: float, start: int, limit: int) -> int:
    """The smallest window from ``start`` up to ``limit`` whose smoothed gold is quiet enough for the margin
    (:func:`noise_rule`); ``limit`` when none is, where the rule then stops the run with its figures."""
    limit = max(start, limit)
    for window in range(start, limit + 1):
        if noise_rule(smoothed_noise(sd_response, batch, window), margin) is None:
            return window
    return limit


def noise_rule(noise: float, margin: float) -> str | None:
    """The determinability rule's first half: why the smoothed gold is too noisy for the margin, or None."""
    if noise < margin / 3:
        return None
    return (
        f"predicted sd of the smoothed gold {noise:.4f} ≥ margin / 3 = {margin / 3:.4f} (margin {margin:.4f}); "
        "raise the batch or --window"
    )


def oracle_rule(reached: dict[int, bool], target: float, max_steps: int) -> str | None:
    """Its second half: which ``oracle_sequence`` seeds never reached the target, or None."""
    missed = [seed for seed, hit in reached.items() if not hit]
    if not missed:
        return None
    return f"oracle_sequence seeds {missed} never reached the target {target:.4f} in {max_steps} steps"


def calibrated_target(initial: float, plateau: float, fraction: float) -> float:
    return initial + fraction * (plateau - initial)


# --- stages --------------------------------------------------------------------------------------------------
def run_ppo(pipeline: Pipeline, name: str, config: str, overrides: list[str]) -> tuple[Path, list[dict]]:
    """One ``fgrlhf ppo`` run, cached by its settings (a hash of the config path and every override names the
    directory, so a changed target or budget never reuses a run; the stage key adds the config's content)."""
    digest = hashlib.sha256(" ".join([config, *overrides]).encode()).hexdigest()[:8]
    out = pipeline.root / "ppo" / f"{name}-{digest}"

    def build() -> None:
        began = time.perf_counter()
        pipeline.run_command("ppo", "--config", config, "--out", out, "--resume", *overrides)
        write_json(
            out / "timing.json", {"name": name, "wall_seconds_with_startup": round(time.perf_counter() - began, 2)}
        )

    pipeline.stage(out / "timing.json", build, inputs=(Path(config),))
    return out, read_jsonl(out / "metrics.jsonl")


def initial_gold(args, prepared, cfg, workdir: Path, n: int) -> dict:
    """Gold of ``n`` rollouts of the initial policy on the PPO prompts, sampled like PPO's rollouts."""
    from fgrlhf.config import ModelConfig
    from fgrlhf.data.loading import load_prompts
    from fgrlhf.envs import load_gold
    from fgrlhf.generation import GenerationSettings, generate_batched

    settings = GenerationSettings(
        max_prompt_tokens=cfg.prompts.max_prompt_tokens,
        max_new_tokens=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        top_p=cfg.rollout.top_p,
        batch_size=32,
        seed=12_345,
    )
    out = workdir / "initial_gold" / f"n{n}-{hashlib.sha256(settings.model_dump_json().encode()).hexdigest()[:8]}.json"

    def build() -> None:
        records = load_prompts(str(prepared.prompts_train))
        prompts = [records[i % len(records)]["prompt"] for i in range(n)]
        responses = generate_batched(
            ModelConfig(name=prepared.backbone, prompt_format=cfg.policy.prompt_format),
            prompts,
            settings,
            desc="initial policy",
        )
        scores = load_gold(GOLD_HOOK[args.env])(prompts, responses)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(
            out,
            {
                "n": n,
                "mean": statistics.fmean(scores),
                "sd": statistics.stdev(scores),
                "settings": settings.model_dump(),
            },
        )

    key = [n, settings.model_dump(), portable(prepared.backbone, workdir), cfg.policy.prompt_format, args.env]
    prepared.pipeline.stage(out, build, key=key, inputs=(prepared.prompts_train,))
    return json.loads(out.read_text(encoding="utf-8"))


def win_rate_of(pipeline: Pipeline, policy: str, out: Path, env: str, n: int | None, cfg, samples: int = 0) -> dict:
    """The policy's answers on the env's eval split (prompt format and lengths of the PPO config ``cfg``)
    judged against the references by the gold: greedy (``samples`` 0), or ``samples`` answers per prompt
    sampled with the rollouts' temperature and top-p, whose preferences are averaged per prompt (the
    ``preferences`` kept are those per-prompt means, one per prompt, as in the greedy case)."""

    def build() -> None:
        from fgrlhf.algorithms.winrate import win_rate
        from fgrlhf.config import ModelConfig
        from fgrlhf.evaluation.judges import build_judge
        from fgrlhf.evaluation.winrate import judge_outputs, load_eval_records
        from fgrlhf.generation import GenerationSettings, generate_batched

        records = load_eval_records(env, None, n)
        repeat = max(samples, 1)
        prompts = [r["prompt"] for r in records for _ in range(repeat)]
        gen = GenerationSettings(
            max_prompt_tokens=cfg.prompts.max_prompt_tokens,
            max_new_tokens=cfg.rollout.max_new_tokens,
            temperature=cfg.rollout.temperature if samples else 0.0,
            top_p=cfg.rollout.top_p if samples else 1.0,
            batch_size=32,
            seed=0,
        )
        outputs = generate_batched(ModelConfig(name=policy, prompt_format=cfg.policy.prompt_format), prompts, gen)
        references = [r["reference"] for r in records for _ in range(repeat)]
        result, rows = judge_outputs(prompts, outputs, references, build_judge("gold", env), env)
        prefs = [
            statistics.fmean(row["preference"] for row in rows[i : i + repeat]) for i in range(0, len(rows), repeat)
        ]
        result |= win_rate(prefs)  # per prompt: the s.e. is not understated by the correlated samples
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, {**result, "policy": policy, "samples_per_prompt": samples, "preferences": prefs})

    generation = [cfg.prompts.max_prompt_tokens, cfg.rollout.max_new_tokens, cfg.rollout.temperature, cfg.rollout.top_p]
    key = [portable(policy, pipeline.root), env, n, samples, generation, cfg.policy.prompt_format]
    pipeline.stage(out, build, key=key)
    return json.loads(out.read_text(encoding="utf-8"))


def eta_minutes(runs_left: int, steps: int, seconds_per_step: float, rms_left: int, rm_seconds: float = 90.0) -> float:
    """Minutes still to go: each PPO run's steps, its actor start-up and two win-rate evals (~40 s), and
    the RMs not yet trained."""
    return (runs_left * (steps * seconds_per_step + 40.0) + rms_left * rm_seconds) / 60


def eta_text(args: argparse.Namespace, workdir: Path, seconds_per_step: float | None) -> str:
    """The ETA of the runs and RMs of this command not yet cached in ``workdir`` (cached ones are reused)."""
    done = lambda pattern: any(workdir.glob(pattern))  # noqa: E731
    runs_left = sum(
        not done(f"ppo/{variant}-s{seed}-*/timing.json") for seed in args.seeds for variant in args.variants
    )
    rms_left = sum(not done(f"rm/*-s{seed}/timing.json") for seed in args.seeds)
    per_step = seconds_per_step or PRIOR_SECONDS_PER_STEP
    minutes = eta_minutes(runs_left, args.max_steps, per_step, 2 * rms_left)
    return (
        f"~{minutes:.0f} min for {runs_left} of {len(args.seeds) * len(args.variants)} PPO runs not cached "
        f"(≤ {args.max_steps} steps × {per_step:.1f} s/step{' measured' if seconds_per_step else ' assumed'}) "
        f"and the RMs of {rms_left} seed(s)"
    )


def run(args: argparse.Namespace) -> dict:
    from fgrlhf.algorithms.winrate import win_rate
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    sizes = SIZES[(args.env, args.quick)]
    preset = QUICK if args.quick else FULL
    workdir = args.workdir or default_workdir(args.env, args.quick)
    config = str(PPO_CONFIG[args.env])
    rm_of = {
        v: FINEGRAINED_RM[args.finegrained_loss] if VARIANTS[v].rm == "finegrained" else VARIANTS[v].rm
        for v in args.variants
    }
    if args.target is None and args.target_delta is None:
        rm_of.setdefault("oracle_sequence", VARIANTS["oracle_sequence"].rm)  # the calibration arm
    metrics: dict[tuple[str, int], list[dict]] = {}
    run_dirs: dict[tuple[str, int], Path] = {}
    with ray_session(args.num_cpus):
        prepared = prepare_data(args.env, workdir, sizes, args.edit_rules)
        print(f"ETA (before calibration): {eta_text(args, workdir, None)}", flush=True)
        data = {"pairs": prepared.pairs, "edits": prepared.edits}
        # One RM pair per seed (RM seed = PPO seed), so RM variance is inside the per-seed spread.
        rms = {
            (name, seed): train_rm(
                prepared, workdir, name, RMS[name][0], data[RMS[name][1]], seed, sizes.rm_overrides + RMS[name][2]
            )
            for seed in args.seeds
            for name in dict.fromkeys(rm_of.values())
        }

        def overrides(variant: str, seed: int, steps: int, rm_seed: int | None = None) -> list[str]:
            arm = VARIANTS[variant]
            return [
                f"policy.name={prepared.backbone}",
                f"reward.model={rms[(rm_of[variant], seed if rm_seed is None else rm_seed)]['final_dir']}",
                f"prompts.path={prepared.prompts_train}",
                f"ppo.reward_mode={arm.mode}",
                f"seed={seed}",
                f"steps={steps}",
                f"gold_reward={GOLD_HOOK[args.env]}",
                *preset["ppo"],
                *args.ppo_overrides,
                *arm.overrides,
            ]

        shared = load_config(PPOTrainConfig, config, overrides("sequence", args.seeds[0], 1))
        batch = shared.ppo.rollout_batch_size
        initial = initial_gold(args, prepared, shared, workdir, args.initial_samples)
        calibration = None
        if args.target is not None:
            target, rule = args.target, "--target"
        elif args.target_delta is not None:
            target, rule = initial["mean"] + args.target_delta, f"initial gold + {args.target_delta}"
        else:
            _, cal = run_ppo(
                prepared.pipeline,
                f"calibration-oracle_sequence-s{args.calibration_seed}",
                config,
                # its critic starts from the first seed's sequence RM (RMs exist for comparison seeds only)
                overrides("oracle_sequence", args.calibration_seed, args.calibration_steps, args.seeds[0]),
            )
            golds = [r["gold_reward_mean"] for r in cal]
            plateau = statistics.fmean(golds[-args.plateau_steps :])
            target = calibrated_target(initial["mean"], plateau, args.target_fraction)
            rule = (
                f"initial + {args.target_fraction:g} × (plateau − initial); plateau = mean gold of the last "
                f"{args.plateau_steps} of {args.calibration_steps} oracle_sequence steps, seed {args.calibration_seed}"
            )
            calibration = {
                "seed": args.calibration_seed,
                "steps": args.calibration_steps,
                "plateau": plateau,
                "plateau_steps": args.plateau_steps,
                "gold": golds,
                "step_seconds_median": statistics.median(r["step_seconds"] for r in cal),
            }
        margin = target - initial["mean"]
        window_rule = "--window" if args.window is not None else "auto"
        if args.window is None:  # before any comparison arm, from the noise alone
            args.window = auto_window(
                initial["sd"], batch, margin, preset["window"], args.max_steps // AUTO_WINDOW_MAX_FRACTION
            )
            log.info(
                "window %d: the smallest from %d up to %d that meets the noise rule (else the largest)",
                args.window,
                preset["window"],
                max(preset["window"], args.max_steps // AUTO_WINDOW_MAX_FRACTION),
            )
        noise = smoothed_noise(initial["sd"], batch, args.window)
        plan = {
            "runs": len(args.seeds) * len(args.variants),
            "max_steps_per_run": args.max_steps,
            "worst_case_steps": len(args.seeds) * len(args.variants) * args.max_steps,
            "calibration_steps": args.calibration_steps if calibration is not None else 0,
        }
        if calibration is not None:
            plan["seconds_per_step_measured"] = calibration["step_seconds_median"]
            plan["worst_case_ppo_minutes"] = plan["worst_case_steps"] * calibration["step_seconds_median"] / 60
        log.info(
            "target %.4f (%s); initial %.4f; noise %.4f vs margin/3 %.4f; plan %s",
            target,
            rule,
            initial["mean"],
            noise,
            margin / 3,
            plan,
        )

        determinability = {"smoothed_gold_sd": noise, "limit_margin_third": margin / 3, "enforced": not args.quick}

        def undetermined(message: str | None) -> None:
            if message is None:
                return
            # --quick is a code-path check whose batch of 8 can never meet the rule: reported, not enforced.
            if args.quick:
                log.warning("quick run, not enforced: %s", message)
                return
            raise SystemExit(f"error: determinability rule failed before the comparison arms: {message}")

        undetermined(noise_rule(noise, margin))
        print(f"ETA: {eta_text(args, workdir, plan.get('seconds_per_step_measured'))}", flush=True)

        def comparison_run(variant: str, seed: int) -> None:
            # Every run goes the whole budget: steps to its own best needs the full curve.
            run_dirs[(variant, seed)], metrics[(variant, seed)] = run_ppo(
                prepared.pipeline, f"{variant}-s{seed}", config, overrides(variant, seed, args.max_steps)
            )

        # The oracle seeds first: the rule needs every one of them to reach the target before any other arm runs.
        if "oracle_sequence" in args.variants:
            for seed in args.seeds:
                comparison_run("oracle_sequence", seed)
            reached = {
                seed: time_to_target(metrics[("oracle_sequence", seed)], target, args.window)["reached"]
                for seed in args.seeds
            }
            determinability["oracle_sequence_missed_seeds"] = [seed for seed, hit in reached.items() if not hit]
            undetermined(oracle_rule(reached, target, args.max_steps))
        for seed in args.seeds:  # seed-major, so machine load hits the arms alike
            for variant in args.variants:
                if (variant, seed) not in metrics:
                    comparison_run(variant, seed)
        evals: dict[int, dict[tuple[str, int | None], dict]] = {}  # samples per prompt (0: greedy) -> ...
        for samples in (0, preset["eval_samples"]):
            suffix = f"-sampled{samples}" if samples else ""
            initial_file = f"initial-n{preset['eval_n'] or 'all'}-t{shared.rollout.max_new_tokens}{suffix}.json"
            evals[samples] = {
                ("initial", None): win_rate_of(
                    prepared.pipeline,
                    prepared.backbone,
                    workdir / "winrate" / initial_file,
                    args.env,
                    preset["eval_n"],
                    shared,
                    samples,
                )
            }
            for key, run_dir in run_dirs.items():
                evals[samples][key] = win_rate_of(
                    prepared.pipeline,
                    str(run_dir / "final"),
                    run_dir / f"winrate{suffix}.json",
                    args.env,
                    preset["eval_n"],
                    shared,
                    samples,
                )

    per_run: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for (variant, seed), records in metrics.items():
        per_run[variant].append(
            {
                "seed": seed,
                **time_to_target(records, target, args.window),
                **steps_to_best(records, args.window),
                "stopped_at_gold": bool(records[-1].get("stopped_at_gold")),
                "win_rate": evals[0][(variant, seed)]["win_rate"],
                "win_rate_sampled": evals[preset["eval_samples"]][(variant, seed)]["win_rate"],
            }
        )
    variants = {v: summarise_variant(runs) for v, runs in per_run.items()}
    # Every run's step 1 samples the same initial policy: their spread / √window measures the smoothed noise.
    step1 = [records[0]["gold_reward_mean"] for records in metrics.values()]

    def table1_of(mode: dict[tuple[str, int | None], dict]) -> dict[str, dict]:
        table = {
            "initial": {
                k: mode[("initial", None)][k]
                for k in ("win_rate", "stderr", "n", "gold_model_mean", "gold_reference_mean")
            }
        }
        for variant in args.variants:
            pooled = win_rate([p for seed in args.seeds for p in mode[(variant, seed)]["preferences"]])
            table[variant] = {
                "win_rate": pooled["win_rate"],
                "stderr": pooled["stderr"],
                "n": pooled["n"],
                "per_seed": [mode[(variant, seed)]["win_rate"] for seed in args.seeds],
                "gold_model_mean": statistics.fmean(mode[(variant, s)]["gold_model_mean"] for s in args.seeds),
                "gold_reference_mean": mode[(variant, args.seeds[0])]["gold_reference_mean"],
            }
        return table

    result = {
        "benchmark": "training_hours",
        "env": args.env,
        "quick": args.quick,
        "workdir": str(workdir),
        "data": prepared.summary,
        "seeds": args.seeds,
        "max_steps": args.max_steps,
        "window": args.window,
        "window_rule": window_rule,
        "rollout_batch_size": batch,
        "initial_gold": initial["mean"],
        "initial_gold_sd": initial["sd"],
        "initial_samples": initial["n"],
        "target": target,
        "target_rule": rule,
        "target_margin": margin,
        "calibration": calibration,
        "noise": {
            "smoothed_gold_sd_predicted": noise,
            "limit_margin_third": margin / 3,
            "determined": noise < margin / 3,
            "smoothed_gold_sd_from_step1_spread": (
                statistics.stdev(step1) / math.sqrt(args.window) if len(step1) > 1 else None
            ),
        },
        "determinability": determinability,
        "budget": {
            **plan,
            "oracle_sequence_reached_every_seed": variants["oracle_sequence"]["censored"] == 0
            if "oracle_sequence" in variants
            else None,
        },
        "ppo_config": config,
        "shared_settings": [*preset["ppo"], *args.ppo_overrides],
        "kl": {
            "estimator": shared.ppo.kl_estimator,
            "kl_coef": shared.ppo.kl_coef,
            "token_mode": "kept: r_t = R_t − β·KL_t in every arm (β = 0 is the paper's literal [R1..Rn])",
        },
        "finegrained_loss": args.finegrained_loss,
        "variant_rm": {v: rm_of[v] for v in args.variants},
        # one RM per name and seed: medians over the seeds, and each seed's wall seconds
        "rm_training": {
            name: {
                "kind": RMS[name][0],
                "steps": statistics.median(rms[(name, s)]["steps"] for s in args.seeds),
                "wall_seconds": statistics.median(rms[(name, s)]["wall_seconds"] for s in args.seeds),
                "loop_seconds": statistics.median(rms[(name, s)]["loop_seconds"] for s in args.seeds),
                "wall_seconds_per_seed": [rms[(name, s)]["wall_seconds"] for s in args.seeds],
                "loss": RMS[name][3],
            }
            for name in dict.fromkeys(name for name, _ in rms)
        },
        "variants": variants,
        "runs": per_run,
        "table1": table1_of(evals[0]),
        "table1_sampled": table1_of(evals[preset["eval_samples"]]),
        "eval_samples_per_prompt": preset["eval_samples"],
        "paper_hours": PAPER_HOURS,
    }
    for variant, summary in variants.items():
        result[f"median_steps_{variant}"] = summary["median_steps"]
        result[f"median_seconds_{variant}"] = summary["median_seconds"]
    for pair, (num, den) in PAIRS.items():
        if num not in variants or den not in variants:
            continue
        by_seed = {v: {r["seed"]: r for r in per_run[v]} for v in (num, den)}
        for key, name in (("seconds", "wallclock"), ("steps", "steps")):
            value, note = ratio(variants[num], variants[den], key)
            full = f"ratio_{name}_{pair}"
            result[full], result[f"{full}_note"] = value, note
            paired = [(by_seed[num][s], by_seed[den][s]) for s in args.seeds]
            per_seed = [censored_ratio(a[key], a["reached"], b[key], b["reached"]) for a, b in paired]
            interval = sign_test_interval([r[1] for r in per_seed], [r[2] for r in per_seed])
            result[f"{full}_ci"] = None if value is None else open_ends_as_null([interval["low"], interval["high"]])
            result[f"{full}_ci_coverage"] = interval["coverage"]
            result[f"{full}_per_seed"] = [r[0] for r in per_seed]
            result[f"{full}_censored"] = {num: variants[num]["censored"], den: variants[den]["censored"]}
            if pair == "token_vs_sequence":
                result[f"ratio_{name}_note"] = note  # the pre-oracle key, kept for readers of older JSON
        # The paper's measure: steps / seconds to each run's own best smoothed gold (never censored).
        for key, name in (("steps_to_best", "steps_to_best"), ("seconds_to_best", "seconds_to_best")):
            per_seed_values = [by_seed[num][s][key] / by_seed[den][s][key] for s in args.seeds]
            interval = sign_test_interval(per_seed_values, per_seed_values)
            full = f"ratio_{name}_{pair}"
            result[full] = statistics.median(per_seed_values)
            result[f"{full}_interval"] = [interval["low"], interval["high"]]
            result[f"{full}_interval_coverage"] = interval["coverage"]
            result[f"{full}_per_seed"] = per_seed_values
    result["interval_method"] = INTERVAL_METHOD
    return result


def markdown(result: dict) -> str:
    noise, budget = result["noise"], result["budget"]
    lines = [
        f"Target: {result['window']}-step moving average of the rollouts' gold ≥ **{result['target']:.3f}** "
        f"({result['target_rule']}); initial policy gold {result['initial_gold']:.3f} "
        f"(sd {result['initial_gold_sd']:.3f}, {result['initial_samples']} rollouts); margin "
        f"{result['target_margin']:.3f}.",
        f"Noise: predicted sd of the smoothed gold {noise['smoothed_gold_sd_predicted']:.4f} (batch "
        f"{result['rollout_batch_size']} × window {result['window']}) vs margin / 3 = "
        f"{noise['limit_margin_third']:.4f}: {'determined' if noise['determined'] else 'NOT determined (raise the batch or window)'}; "
        f"measured: sd of the runs' step-1 gold / √window = {fmt(noise['smoothed_gold_sd_from_step1_spread'], 4)}.",
        f"Budget: calibration {budget['calibration_steps']} steps, then {len(result['seeds'])} seed(s) × "
        f"{len(result['variants'])} arms × ≤ {result['max_steps']} PPO steps = ≤ {budget['worst_case_steps']} steps"
        + (
            f" × {budget['seconds_per_step_measured']:.1f} s/step (calibration) ≈ "
            f"{budget['worst_case_ppo_minutes']:.0f} min worst case"
            if "seconds_per_step_measured" in budget
            else ""
        )
        + "; oracle_sequence reached the target in every seed: "
        + {True: "yes", False: "**no** (the budget does not determine the answer)", None: "not run"}[
            budget["oracle_sequence_reached_every_seed"]
        ]
        + ".",
        f"Determinability rule ({'enforced' if result['determinability']['enforced'] else 'reported only, --quick'}): "
        f"noise {result['determinability']['smoothed_gold_sd']:.4f} vs margin / 3 "
        f"{result['determinability']['limit_margin_third']:.4f}; oracle_sequence seeds that missed the target: "
        f"{result['determinability'].get('oracle_sequence_missed_seeds', 'not run')}.",
        f"KL: {result['kl']['estimator']}, β = {result['kl']['kl_coef']}, {result['kl']['token_mode']}.",
        "",
        "| RM (median over seeds) | loss | steps | train s (wall / loop) | paper h |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for name, t in result["rm_training"].items():
        lines.append(
            f"| {name} | {t['loss']} | {t['steps']:g} | {t['wall_seconds']:.0f} / {t['loop_seconds']:.1f} | "
            f"{result['paper_hours']['rm'][t['kind']]} |"
        )
    lines += [
        "",
        (
            "| PPO arm | reached | steps to target, median [min–max] | PPO s, median [min–max] | "
            "final gold (moving avg.) | final KL (k1, per response) | final response tokens | paper h |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant, s in result["variants"].items():
        bound = "≥ " if s["median_is_lower_bound"] else ""
        lines.append(
            f"| {variant} | {s['reached']}/{s['runs']} | {bound}{s['median_steps']:g} "
            f"[{s['min_steps']}–{s['max_steps']}] | {bound}{s['median_seconds']:.0f} "
            f"[{s['min_seconds']:.0f}–{s['max_seconds']:.0f}] | {s['median_final_gold_ma']:.3f} | "
            f"{fmt(s.get('median_final_kl'), 2)} | {fmt(s.get('median_final_response_len'), 1)} | "
            f"{result['paper_hours']['ppo'].get(variant, '–')} |"
        )
    lines.append("")
    lines.append(f"Intervals: {result['interval_method']}.")
    for pair in PAIRS:
        key = f"ratio_steps_to_best_{pair}"
        if key in result:
            low, high = result[f"{key}_interval"]
            per_seed = ", ".join(f"{v:.2f}" for v in result[f"{key}_per_seed"])
            seconds = result[f"ratio_seconds_to_best_{pair}"]
            lines.append(
                f"- {key} (the paper's measure: steps to each run's own best smoothed gold): {result[key]:.2f} "
                f"[{low:.2f}, {high:.2f}, coverage {result[f'{key}_interval_coverage']:.1%}]; per seed {per_seed}; "
                f"seconds: {seconds:.2f}"
            )
        for name in ("wallclock", "steps"):
            key = f"ratio_{name}_{pair}"
            if key in result:
                ci = result[f"{key}_ci"]
                coverage = result.get(f"{key}_ci_coverage")
                ci_text = (
                    f" [{fmt(ci[0], 2)}, {fmt(ci[1], 2)}, coverage {coverage:.1%}]"
                    if ci and coverage is not None
                    else ""
                )
                censored = ", ".join(f"{k} {v}" for k, v in result[f"{key}_censored"].items())
                lines.append(
                    f"- {key}: {fmt(result[key], 2)}{ci_text} ({result[f'{key}_note']}; censored runs: "
                    f"{censored})" + ("; paper 2 h / 4 h = 0.50" if pair == "token_vs_sequence" else "")
                )
    for key, answers in (
        ("table1", "greedy answers"),
        (
            "table1_sampled",
            f"{result['eval_samples_per_prompt']} answers per prompt sampled as in the rollouts "
            "(preferences averaged per prompt; n = prompts × seeds)",
        ),
    ):
        lines += [
            "",
            f"Table 1 in the simulation: win rate vs the env's references on the eval split, gold judge, {answers} "
            "(seeds pooled; final policies after the whole budget).",
            "",
            "| policy | win rate % ± s.e. | n | per seed | gold mean (policy / reference) |",
            "| --- | ---: | ---: | ---: | ---: |",
        ]
        for name, row in result[key].items():
            per_seed = ", ".join(f"{v:.1f}" for v in row.get("per_seed", []))
            lines.append(
                f"| {name} | {row['win_rate']:.1f} ± {row['stderr']:.1f} | {row['n']} | {per_seed} | "
                f"{row['gold_model_mean']:.3f} / {row['gold_reference_mean']:.3f} |"
            )
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Mean over seeds with a min–max band per arm (at each step, over the runs still going)."""
    plt = pyplot()
    panels = (
        ("gold_ma", f"gold, {result['window']}-step moving average"),
        ("kl", "KL to reference (k1, per response)"),
        ("response_len", "response tokens"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4))
    for k, (variant, runs) in enumerate(result["runs"].items()):
        for ax, (key, label) in zip(axes, panels):
            by_step: dict[int, list[float]] = {}
            for run in runs:
                for step, value in zip(run["curve"]["step"], run["curve"][key]):
                    if value is not None:
                        by_step.setdefault(step, []).append(value)
            steps = sorted(by_step)
            ax.plot(steps, [statistics.fmean(by_step[s]) for s in steps], color=f"C{k}", label=variant)
            ax.fill_between(
                steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps], color=f"C{k}", alpha=0.15
            )
            ax.set_xlabel("PPO step")
            ax.set_ylabel(label)
    axes[0].axhline(result["target"], color="black", lw=0.8, ls="--", label="target")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"PPO learning curves, {result['env']} ({len(result['seeds'])} seeds: mean, band = min–max)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "training_hours")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help=f"PPO seeds of the comparison, each with its own RMs (RM seed = PPO seed) (default "
        f"{' '.join(map(str, DEFAULT_SEEDS))}; --quick: 0)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        help=f"PPO step budget per run (default {FULL['max_steps']}; --quick: {QUICK['max_steps']})",
    )
    parser.add_argument(
        "--window",
        type=int,
        help=f"moving-average window in steps (default: the smallest from {FULL['window']} (--quick: "
        f"{QUICK['window']}) up to --max-steps / {AUTO_WINDOW_MAX_FRACTION} that meets the noise rule, chosen "
        "before any comparison arm runs)",
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--target", type=float, help="absolute gold target (skips the calibration)")
    target.add_argument("--target-delta", type=float, help="target = initial gold + D (skips the calibration)")
    parser.add_argument(
        "--target-fraction",
        type=float,
        default=0.5,
        help="calibration rule: target = initial + F × (plateau − initial) (default 0.5)",
    )
    parser.add_argument("--calibration-seed", type=int, default=100, help="oracle_sequence calibration seed")
    parser.add_argument("--calibration-steps", type=int, help="calibration run length (default: --max-steps)")
    parser.add_argument(
        "--plateau-steps",
        type=int,
        help="calibration steps averaged as the plateau "
        f"(default {FULL['plateau_steps']}; --quick: {QUICK['plateau_steps']})",
    )
    parser.add_argument(
        "--initial-samples",
        type=int,
        help=f"rollouts of the initial policy for its gold and sd (default {FULL['initial_samples']})",
    )
    parser.add_argument(
        "--ppo",
        dest="ppo_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="PPO config override for every arm, e.g. --ppo ppo.kl_coef=0.05 (repeatable)",
    )
    parser.add_argument(
        "--finegrained-loss",
        choices=list(FINEGRAINED_RM),
        default="eq3",
        help="loss of the edited-data token RM behind the fine-grained arms (default eq3)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(DEFAULT_VARIANTS),
        help=f"PPO arms (default: {' '.join(DEFAULT_VARIANTS)}; the token/sequence ratios need both of those)",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.seeds = args.seeds or ([0] if args.quick else list(DEFAULT_SEEDS))
    args.max_steps = args.max_steps or preset["max_steps"]
    args.calibration_steps = args.calibration_steps or args.max_steps
    args.plateau_steps = args.plateau_steps or preset["plateau_steps"]
    args.initial_samples = args.initial_samples or preset["initial_samples"]
    if (args.window or preset["window"]) > args.max_steps:
        parser.error(f"--window {args.window or preset['window']} exceeds --max-steps {args.max_steps}")
    if args.plateau_steps > args.calibration_steps:
        parser.error(f"--plateau-steps {args.plateau_steps} exceeds --calibration-steps {args.calibration_steps}")
    if args.calibration_seed in args.seeds:
        parser.error(f"--calibration-seed {args.calibration_seed} is also a comparison seed")
    if not {"token", "sequence"} <= set(args.variants):
        parser.error("--variants must include token and sequence (the ratios compare them)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    finish(args, run(args), "training_hours", plot, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
