"""Table 3 of 2406.02756: RM training time, and PPO time to a fixed gold-reward target per reward type.

  python benchmarks/training_hours.py [--env synthetic] [--quick] [--seeds 0 1 2] [--max-steps 20]
                                      [--target G | --target-delta 0.05] [--window 5] [--finegrained-loss eq3]
                                      [--ppo KEY=VALUE ...]
                                      [--variants sequence fine_grained_sequence token]
                                      [--workdir DIR] [--json OUT.json] [--plot OUT.png]

RMs (benchmarks/common.py pipeline, seed 0): a sequence-level RM (Bradley–Terry) on the env's original
pairs, and the token RM on the rule-edited data, trained with Eq. 3 (``--finegrained-loss eq3``, the
default) or Eq. 4. Eq. 3 is the default because Eq. 4 is not invariant to a constant shift of the token
rewards: on edits that remove more tokens than they add it is minimised by a constant negative token
reward (BENCHMARKS.md, Table 2), which would make the token variants a pure length penalty. PPO variants,
all from the same initial policy (the synthetic env's SFT policy) with identical batch sizes
(configs/ppo-synthetic-cpu.yaml, plus any ``--ppo`` overrides; runs with overrides get their own
directories, named by a hash of them):

- ``sequence``: the sequence RM, reward at the last token (``ppo.reward_mode=sequence``; the paper's
  PPO-RLHF baseline);
- ``fine_grained_sequence``: the edited-data token RM's mean r_t used as a sequence reward;
- ``token``: the edited-data token RM's per-token rewards (the paper's fine-grained PPO).

Runs go seed-major (seed 0: all three variants, then seed 1, ...) so machine load hits them alike. The
gold reward of each step's rollouts (``gold_reward_mean`` in metrics.jsonl; step 1 samples the initial
policy) is smoothed by a trailing moving average of ``--window`` steps. Target: ``--target``, else the
initial policy's gold (mean of every run's step-1 gold) + ``--target-delta``. Time to target = the first
step whose moving average reaches it, and the PPO loop seconds up to it (sum of ``step_seconds``; actor
start-up excluded, identical for all variants). A run that never reaches it is censored at its last step:
medians with half or more runs censored are lower bounds and are flagged, and a ratio of a bound is
reported as a bound (or not at all when both sides are), never as a measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (  # noqa: E402
    ROOT, SIZES, add_common_arguments, default_workdir, finish, fmt, prepare_data, pyplot, ray_session, read_jsonl,
    run_command, save_figure, stage, train_rm, write_json)

PPO_CONFIG = {"synthetic": ROOT / "configs/ppo-synthetic-cpu.yaml", "alpaca-sim": ROOT / "configs/ppo-smollm2-cpu.yaml"}
GOLD_HOOK = {"synthetic": "fgrlhf.envs.synthetic:gold_reward", "alpaca-sim": "fgrlhf.envs.alpaca_sim:gold_reward"}
# RM name -> (kind, training data, train-rm overrides, loss); the token RMs are rm_accuracy.py's fine-grained
# RMs of the same names (shared work dir).
RMS = {"sequence-original": ("sequence", "pairs", (), "Bradley–Terry on pairs"),
       "token-finegrained": ("token", "edits", (), "Eq. 4 on edits"),
       "token-finegrained_eq3": ("token", "edits", ("loss=eq3",), "Eq. 3 on edits")}
FINEGRAINED_RM = {"eq3": "token-finegrained_eq3", "eq4": "token-finegrained"}
# PPO variant -> (RM, or "finegrained" for the --finegrained-loss RM; ppo.reward_mode)
VARIANTS = {"sequence": ("sequence-original", "sequence"),
            "fine_grained_sequence": ("finegrained", "fine_grained_sequence"),
            "token": ("finegrained", "token")}
PAPER_HOURS = {"rm": {"sequence": 0.2, "token": 0.3}, "ppo": {"sequence": 4.0, "token": 2.0}}
QUICK_PPO = ("ppo.rollout_batch_size=8", "ppo.step_batch_size=4", "rollout.max_new_tokens=24", "save_every=0")


def moving_average(values: list[float], window: int) -> list[float | None]:
    """Trailing mean of ``window`` values; None until a full window exists."""
    return [statistics.fmean(values[i + 1 - window:i + 1]) if i + 1 >= window else None for i in range(len(values))]


def time_to_target(records: list[dict], target: float, window: int) -> dict:
    gold = [r["gold_reward_mean"] for r in records]
    seconds, total = [], 0.0
    for r in records:
        total += r["step_seconds"]
        seconds.append(total)
    smoothed = moving_average(gold, window)
    hit = next((i for i, v in enumerate(smoothed) if v is not None and v >= target), None)
    last = len(records) - 1
    return {"reached": hit is not None, "steps": (hit if hit is not None else last) + 1,
            "seconds": seconds[hit if hit is not None else last], "max_steps": len(records),
            "initial_gold": gold[0], "final_gold_ma": smoothed[-1],
            "curve": {"step": [r["step"] for r in records], "seconds": seconds, "gold": gold, "gold_ma": smoothed}}


def summarise_variant(runs: list[dict]) -> dict:
    out: dict = {"runs": len(runs), "reached": sum(r["reached"] for r in runs)}
    censored = len(runs) - out["reached"]
    # The median is a censored value (a lower bound) once half or more runs never reached the target.
    out["median_is_lower_bound"] = 2 * censored >= len(runs)
    # Where each run ended (moving average over the last window): a run that over-optimises its RM shows
    # up here even when no run reaches the target.
    out["median_final_gold_ma"] = statistics.median(r["final_gold_ma"] for r in runs)
    for key in ("steps", "seconds"):
        values = sorted(r[key] for r in runs)
        out[f"median_{key}"] = statistics.median(values)
        out[f"min_{key}"], out[f"max_{key}"] = values[0], values[-1]
    return out


def ratio(token: dict, sequence: dict, key: str) -> tuple[float | None, str]:
    """median token / median sequence, and whether that is exact or a bound (None when undetermined)."""
    value = token[f"median_{key}"] / sequence[f"median_{key}"]
    token_bound, sequence_bound = token["median_is_lower_bound"], sequence["median_is_lower_bound"]
    if token_bound and sequence_bound:
        return None, "undetermined: both medians censored"
    if token_bound:
        return value, "lower bound: token median censored"
    if sequence_bound:
        return value, "upper bound: sequence median censored"
    return value, "exact"


def run_ppo(args, prepared, workdir: Path, variant: str, seed: int, rm_dir: str) -> list[dict]:
    # Cached runs are reused by directory name, so other settings must not share one.
    tag = f"-{hashlib.sha256(' '.join(args.ppo_overrides).encode()).hexdigest()[:8]}" if args.ppo_overrides else ""
    out = workdir / "ppo" / f"{variant}-s{seed}{tag}"
    _, mode = VARIANTS[variant]
    overrides = [f"policy.name={prepared.backbone}", f"reward.model={rm_dir}",
                 f"prompts.path={prepared.prompts_train}", f"ppo.reward_mode={mode}", f"seed={seed}",
                 f"steps={args.max_steps}", f"gold_reward={GOLD_HOOK[args.env]}"]
    overrides += (*QUICK_PPO, *args.ppo_overrides) if args.quick else args.ppo_overrides

    def build() -> None:
        began = time.perf_counter()
        run_command("ppo", "--config", PPO_CONFIG[args.env], "--out", out, "--resume", *overrides)
        write_json(out / "timing.json", {"variant": variant, "seed": seed,
                                          "wall_seconds_with_startup": round(time.perf_counter() - began, 2)})

    stage(out / "timing.json", build)
    return read_jsonl(out / "metrics.jsonl")


def run(args: argparse.Namespace) -> dict:
    sizes = SIZES[(args.env, args.quick)]
    workdir = args.workdir or default_workdir(args.env, args.quick)
    metrics: dict[tuple[str, int], list[dict]] = {}
    with ray_session(args.num_cpus):
        prepared = prepare_data(args.env, workdir, sizes, args.edit_rules)
        data = {"pairs": prepared.pairs, "edits": prepared.edits}
        rm_of = {v: FINEGRAINED_RM[args.finegrained_loss] if VARIANTS[v][0] == "finegrained" else VARIANTS[v][0]
                 for v in args.variants}
        rms = {name: train_rm(prepared, workdir, name, RMS[name][0], data[RMS[name][1]], 0,
                              sizes.rm_overrides + RMS[name][2])
               for name in dict.fromkeys(rm_of.values())}
        for seed in args.seeds:
            for variant in args.variants:
                metrics[(variant, seed)] = run_ppo(args, prepared, workdir, variant, seed,
                                                   rms[rm_of[variant]]["final_dir"])

    initial = statistics.fmean(records[0]["gold_reward_mean"] for records in metrics.values())
    target = args.target if args.target is not None else initial + args.target_delta
    per_run: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for (variant, seed), records in metrics.items():
        per_run[variant].append({"seed": seed, **time_to_target(records, target, args.window)})
    variants = {v: summarise_variant(runs) for v, runs in per_run.items()}
    result = {
        "benchmark": "training_hours", "env": args.env, "quick": args.quick, "workdir": str(workdir),
        "data": prepared.summary, "seeds": args.seeds, "max_steps": args.max_steps, "window": args.window,
        "initial_gold": initial, "target": target,
        "target_rule": "--target" if args.target is not None else f"initial gold + {args.target_delta}",
        "ppo_config": str(PPO_CONFIG[args.env]), "ppo_overrides": args.ppo_overrides,
        "finegrained_loss": args.finegrained_loss, "variant_rm": rm_of,
        "rm_training": {name: {**{k: t[k] for k in ("kind", "steps", "wall_seconds", "loop_seconds")},
                               "loss": RMS[name][3]} for name, t in rms.items()},
        "variants": variants, "runs": per_run,
        "paper_hours": PAPER_HOURS,
    }
    for variant, summary in variants.items():
        result[f"median_steps_{variant}"] = summary["median_steps"]
        result[f"median_seconds_{variant}"] = summary["median_seconds"]
    for key, name in (("seconds", "wallclock"), ("steps", "steps")):
        value, note = ratio(variants["token"], variants["sequence"], key)
        result[f"ratio_{name}_token_vs_sequence"] = value
        result[f"ratio_{name}_note"] = note
    return result


def markdown(result: dict) -> str:
    lines = [(f"Target: moving-average ({result['window']} steps) gold reward >= {result['target']:.3f} "
              f"({result['target_rule']}; initial policy gold {result['initial_gold']:.3f}); "
              f"{len(result['seeds'])} seed(s), at most {result['max_steps']} PPO steps."), "",
             "| RM | loss | steps | train s (wall / loop) | paper h |", "| --- | --- | ---: | ---: | ---: |"]
    for name, t in result["rm_training"].items():
        lines.append(f"| {name} | {t['loss']} | {t['steps']} | {t['wall_seconds']:.0f} / {t['loop_seconds']:.1f} | "
                     f"{result['paper_hours']['rm'][t['kind']]} |")
    lines += ["", ("| PPO variant | reached target | steps median [min–max] | PPO seconds median [min–max] | "
                   "final gold (moving avg., median) | paper h |"),
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for variant, s in result["variants"].items():
        bound = "≥ " if s["median_is_lower_bound"] else ""
        lines.append(f"| {variant} | {s['reached']}/{s['runs']} | {bound}{s['median_steps']:g} "
                     f"[{s['min_steps']}–{s['max_steps']}] | {bound}{s['median_seconds']:.0f} "
                     f"[{s['min_seconds']:.0f}–{s['max_seconds']:.0f}] | {s['median_final_gold_ma']:.3f} | "
                     f"{result['paper_hours']['ppo'].get(variant, '–')} |")
    for name in ("wallclock", "steps"):
        lines.append(f"\nratio token / sequence ({name}): {fmt(result[f'ratio_{name}_token_vs_sequence'], 2)} "
                     f"({result[f'ratio_{name}_note']}); paper 2 h / 4 h = 0.50")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    styles = ["-", "--", ":", "-."]
    for k, (variant, runs) in enumerate(result["runs"].items()):
        for j, run in enumerate(runs):
            curve = run["curve"]
            points = [(s, t, v) for s, t, v in zip(curve["step"], curve["seconds"], curve["gold_ma"]) if v is not None]
            label = variant if j == 0 else None
            for ax, x in zip(axes, (1, 0)):
                ax.plot([p[x] for p in points], [p[2] for p in points], styles[j % len(styles)], color=f"C{k}",
                        label=label)
    for ax, xlabel in zip(axes, ("PPO seconds (loop, start-up excluded)", "PPO step")):
        ax.axhline(result["target"], color="black", lw=0.8, ls="--", label="target")
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel(f"gold reward, {result['window']}-step moving average")
    axes[1].legend(fontsize=8)
    fig.suptitle(f"PPO time to target, {result['env']} (line style = seed)")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "training_hours")
    parser.add_argument("--seeds", type=int, nargs="+", help="PPO seeds (default 0 1 2; --quick: 0)")
    parser.add_argument("--max-steps", type=int, help="PPO steps per run (default 20; --quick: 3)")
    parser.add_argument("--window", type=int, help="moving-average window in steps (default 5; --quick: 2)")
    parser.add_argument("--target", type=float, help="absolute gold target (default: initial + --target-delta)")
    parser.add_argument("--target-delta", type=float, default=0.05, help="target above the initial gold")
    parser.add_argument("--ppo", dest="ppo_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="PPO config override for every variant, e.g. --ppo ppo.kl_coef=0.05 (repeatable)")
    parser.add_argument("--finegrained-loss", choices=list(FINEGRAINED_RM), default="eq3",
                        help="loss of the edited-data token RM behind the fine-grained variants (default eq3)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="PPO variants (the token/sequence ratios need both of those)")
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    args.max_steps = args.max_steps or (3 if args.quick else 20)
    args.window = args.window or (2 if args.quick else 5)
    if args.window > args.max_steps:
        parser.error(f"--window {args.window} exceeds --max-steps {args.max_steps}")
    if not {"token", "sequence"} <= set(args.variants):
        parser.error("--variants must include token and sequence (the ratios compare them)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    finish(args, run(args), "training_hours", plot, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
