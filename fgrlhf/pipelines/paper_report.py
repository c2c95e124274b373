"""The paper job's report: Tables 1–3 of 2406.02756 from the stage outputs, curves against hours, drift alarms.

Table 3 in the paper's form: RM hours per arm (the RM the arm trains on), PPO hours to each run's best
validation checkpoint, their ratio token / sequence (median over seeds; with two or more seeds the sign-test
interval of the per-seed ratios, :func:`fgrlhf.algorithms.intervals.sign_test_interval`, with its exact coverage), and hours to the target fixed before any arm ran,
per arm and as the same token / sequence ratio (:func:`target_ratio`; a run short of the target makes its seed's
ratio a bound).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from fgrlhf.algorithms.intervals import censored_ratio, open_ends_as_null, sign_test_interval
from fgrlhf.data.loading import read_jsonl
from fgrlhf.pipelines.paper_config import ARM_RM, PaperConfig


def cumulative_hours(records: list[dict]) -> list[float]:
    """Hours of the PPO loop up to the end of each step (sum of ``step_seconds``)."""
    total, hours = 0.0, []
    for record in records:
        total += record["step_seconds"]
        hours.append(total / 3600)
    return hours


def hours_at(records: list[dict], step: int) -> float:
    """PPO hours to the end of ``step`` (steps and checkpoints are numbered from 1)."""
    return sum(r["step_seconds"] for r in records if r["step"] <= step) / 3600


def run_summary(run: dict, target: float, gpus: float) -> dict:
    """One PPO run: hours to its best checkpoint and to the target, and its alarms."""
    records = read_jsonl(run["metrics"])
    best = run["best_step"]
    reached = [step for step, result in sorted(run["checkpoints"].items()) if result["win_rate"] >= target]
    alarms = [alarm for record in records for alarm in record.get("alarms") or []]
    return {
        "arm": run["arm"],
        "seed": run["seed"],
        "best_step": best,
        "hours_to_best": hours_at(records, best),
        "gpu_hours_to_best": hours_at(records, best) * gpus,
        "target_step": reached[0] if reached else None,
        "hours_to_target": hours_at(records, reached[0]) if reached else None,
        "hours_total": cumulative_hours(records)[-1],  # a run short of the target took at least this long
        "validation_win_rate": {str(step): r["win_rate"] for step, r in sorted(run["checkpoints"].items())},
        "eval_win_rate": run["table1"]["win_rate"],
        "eval_stderr": run["table1"]["stderr"],
        "alarms": alarms,
    }


def table_3(cfg: PaperConfig, rms: dict, summaries: list[dict]) -> dict:
    arms: dict = {}
    for arm in cfg.ppo.arms:
        runs = [s for s in summaries if s["arm"] == arm]
        rm = rms[ARM_RM[arm]]
        reached = [r["hours_to_target"] for r in runs if r["hours_to_target"] is not None]
        arms[arm] = {
            "rm": ARM_RM[arm] if not arm.startswith("oracle_") else None,
            "rm_wall_hours": None if arm.startswith("oracle_") else rm["wall_hours"],
            "rm_gpu_hours": None if arm.startswith("oracle_") else rm["gpu_hours"],
            "rm_loop_hours": None if arm.startswith("oracle_") else rm["loop_hours"],
            "ppo_hours_to_best": statistics.median(r["hours_to_best"] for r in runs),
            "ppo_gpu_hours_to_best": statistics.median(r["gpu_hours_to_best"] for r in runs),
            "ppo_hours_to_best_per_seed": {str(r["seed"]): r["hours_to_best"] for r in runs},
            "best_step_per_seed": {str(r["seed"]): r["best_step"] for r in runs},
            "hours_to_target": statistics.median(reached) if len(reached) == len(runs) else None,
            "target_reached": f"{len(reached)}/{len(runs)}",
        }
    result: dict = {"arms": arms}
    if "token" in arms and "sequence" in arms:
        token = [arms["token"]["ppo_hours_to_best_per_seed"][str(s)] for s in cfg.ppo.seeds]
        sequence = [arms["sequence"]["ppo_hours_to_best_per_seed"][str(s)] for s in cfg.ppo.seeds]
        ratio = statistics.median(token) / statistics.median(sequence) if statistics.median(sequence) else None
        result["ratio_token_over_sequence"] = ratio
        if len(cfg.ppo.seeds) >= 2 and all(sequence):
            per_seed = [t / q for t, q in zip(token, sequence)]
            interval = sign_test_interval(per_seed, per_seed)
            result["ratio_per_seed"] = dict(zip(map(str, cfg.ppo.seeds), per_seed))
            result["ratio_interval_95"] = [interval["low"], interval["high"]]
            result["ratio_interval_coverage"] = interval["coverage"]
        result.update(target_ratio(cfg, summaries))
    return result


def target_ratio(cfg: PaperConfig, summaries: list[dict]) -> dict:
    """PPO hours to the pre-registered target, token / sequence, per seed and their median, with the
    sign-test interval (two or more seeds). A run that never reached the target counts its whole PPO hours, a
    lower bound on its own: its seed's ratio is then a bound (:func:`censored_ratio`), whose open end (0 or
    ∞, null in JSON) enters the interval. Time to one's own best rewards a run that stalls early; a common
    target does not."""
    runs = {(s["arm"], s["seed"]): s for s in summaries}

    def hours(arm: str, seed: int) -> tuple[float, bool]:
        run = runs[(arm, seed)]
        reached = run["hours_to_target"] is not None
        return (run["hours_to_target"] if reached else run["hours_total"]), reached

    per_seed = [censored_ratio(*hours("token", seed), *hours("sequence", seed)) for seed in cfg.ppo.seeds]
    result: dict = {
        "ratio_to_target_token_over_sequence": statistics.median(value for value, _, _ in per_seed),
        "ratio_to_target_per_seed": {str(seed): value for seed, (value, _, _) in zip(cfg.ppo.seeds, per_seed)},
        "ratio_to_target_censored": {
            arm: sum(not hours(arm, seed)[1] for seed in cfg.ppo.seeds) for arm in ("token", "sequence")
        },
    }
    if len(per_seed) >= 2:
        interval = sign_test_interval([low for _, low, _ in per_seed], [high for _, _, high in per_seed])
        ends = (interval["low"], interval["high"])
        result["ratio_to_target_interval_95"] = open_ends_as_null(ends)
        result["ratio_to_target_interval_coverage"] = interval["coverage"]
    return result


def table_1(cfg: PaperConfig, summaries: list[dict], sft: dict) -> dict:
    """Win rate on the eval split of each run's best validation checkpoint, the seeds' mean ± combined s.e."""
    table = {"sft": {"win_rate": sft["win_rate"], "stderr": sft["stderr"], "n": sft["n"]}}
    for arm in cfg.ppo.arms:
        runs = [s for s in summaries if s["arm"] == arm]
        table[arm] = {
            "win_rate": statistics.fmean(r["eval_win_rate"] for r in runs),
            "stderr": math.sqrt(sum(r["eval_stderr"] ** 2 for r in runs)) / len(runs),
            "seeds": len(runs),
            "best_step_per_seed": {str(r["seed"]): r["best_step"] for r in runs},
        }
    return table


def table_2(results: dict) -> dict:
    return {
        kind: {
            name: {
                "accuracy": r["accuracy"],
                "ci_low": r["ci_low"],
                "ci_high": r["ci_high"],
                "n": r["n"],
                "longer_wins": r["length_baseline"]["longer_wins"],
                "shorter_wins": r["length_baseline"]["shorter_wins"],
            }
            for name, r in sets.items()
        }
        for kind, sets in results.items()
    }


def plot_curves(out: Path, runs: dict) -> Path:
    """Validation win rate, response length and KL against PPO hours, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for name, run in runs.items():
        records = read_jsonl(run["metrics"])
        hours = cumulative_hours(records)
        steps = sorted(run["checkpoints"])
        axes[0].plot(
            [hours_at(records, s) for s in steps],
            [run["checkpoints"][s]["win_rate"] for s in steps],
            marker="o",
            label=name,
        )
        axes[1].plot(hours, [r["response_len_mean"] for r in records], label=name)
        axes[2].plot(hours, [r.get("kl_k1_seq_mean", r.get("kl_seq_mean", r["kl_mean"])) for r in records], label=name)
    for ax, title in zip(axes, ("validation win rate (%)", "response length (tokens)", "KL to the reference")):
        ax.set(xlabel="PPO hours", title=title)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = out / "plots" / "curves.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _fmt(value, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(report: dict) -> str:
    t1, t2, t3 = report["table_1"], report["table_2"], report["table_3"]
    lines = [
        "# fgrlhf paper job report (2406.02756)",
        "",
        f"Policy `{report['policy']}`, judge `{report['judge']}`; splits {report['splits']}.",
        "",
        "## Table 1: win rate vs the reference outputs (eval split, best validation checkpoint)",
        "",
        "| arm | win rate | s.e. | seeds |",
        "| --- | --- | --- | --- |",
        *[f"| {arm} | {r['win_rate']:.1f} | {r['stderr']:.1f} | {r.get('seeds', '–')} |" for arm, r in t1.items()],
        "",
        "## Table 2: RM accuracy on held-out pairs, with the length baselines on the same pairs",
        "",
        "| RM | pairs | accuracy (95% CI) | longer wins | shorter wins | n |",
        "| --- | --- | --- | --- | --- | --- |",
        *[
            f"| {kind} | {name} | {r['accuracy']:.3f} ({r['ci_low']:.3f}–{r['ci_high']:.3f}) | "
            f"{r['longer_wins']:.3f} | {r['shorter_wins']:.3f} | {r['n']} |"
            for kind, sets in t2.items()
            for name, r in sets.items()
        ],
        "",
        "## Table 3: training hours",
        "",
        f"Target: {report['target']['rule']} = {report['target']['target_win_rate']:.1f}.",
        "",
        "| arm | RM wall h | RM loop h | RM GPU-h | PPO h to best | PPO GPU-h to best | h to target (reached) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {arm} | {_fmt(r['rm_wall_hours'], 4)} | {_fmt(r['rm_loop_hours'], 4)} | {_fmt(r['rm_gpu_hours'], 4)} | "
            f"{_fmt(r['ppo_hours_to_best'], 4)} | "
            f"{_fmt(r['ppo_gpu_hours_to_best'], 4)} | {_fmt(r['hours_to_target'], 4)} ({r['target_reached']}) |"
            for arm, r in t3["arms"].items()
        ],
        "",
    ]
    if "ratio_token_over_sequence" in t3:
        interval = t3.get("ratio_interval_95")
        lines.append(
            f"PPO hours to best, token / sequence: {_fmt(t3['ratio_token_over_sequence'])}"
            + (
                f" (sign-test interval over seeds {interval[0]:.2f}–{interval[1]:.2f}, "
                f"coverage {100 * t3['ratio_interval_coverage']:.1f}%)"
                if interval
                else ""
            )
        )
        lines.append("")
    if "ratio_to_target_token_over_sequence" in t3:
        interval = t3.get("ratio_to_target_interval_95")
        censored = t3["ratio_to_target_censored"]
        lines.append(
            f"PPO hours to the target, token / sequence: {_fmt(t3['ratio_to_target_token_over_sequence'])}"
            + (
                f" (sign-test interval over seeds [{_fmt(interval[0])}, {_fmt(interval[1])}], "
                f"coverage {100 * t3['ratio_to_target_interval_coverage']:.1f}%)"
                if interval
                else ""
            )
            + f"; runs short of the target (their whole hours count, a bound): token {censored['token']}, "
            f"sequence {censored['sequence']}"
        )
        lines.append("")
    lines += ["## Drift alarms", ""]
    alarms = report["alarms"]
    lines += [
        f"- {run}: " + ("none" if not found else "; ".join(f"{a['kind']} at step {a['step']}" for a in found))
        for run, found in alarms.items()
    ]
    lines += ["", f"![curves]({report['plot']})", ""]
    return "\n".join(lines)


def write_report(out: Path, cfg: PaperConfig, *, rms, table2, target, sft, runs, ppo_gpus: float) -> dict:
    fixed = json.loads(Path(target).read_text())
    summaries = [run_summary(run, fixed["target_win_rate"], ppo_gpus) for run in runs.values()]
    report = {
        "policy": cfg.policy,
        "judge": cfg.eval.judge,
        "splits": json.loads((out / "data" / "splits.json").read_text()),
        "table_1": table_1(cfg, summaries, sft),
        "table_2": table_2(table2),
        "table_3": table_3(cfg, rms, summaries),
        "target": fixed,
        "runs": summaries,
        "alarms": {f"{s['arm']}-s{s['seed']}": s["alarms"] for s in summaries},
        "plot": str(plot_curves(out, runs).relative_to(out)),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render(report), encoding="utf-8")
    return report
