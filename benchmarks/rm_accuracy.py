"""Table 2 of 2406.02756: token-level RM accuracy with vs without the fine-grained (minimal-edit) data.

  python benchmarks/rm_accuracy.py [--env synthetic|balanced|alpaca-sim] [--quick] [--seeds 0 1 2 3 4]
                                   [--workdir DIR] [--json OUT.json] [--plot OUT.png]

Same data budget for both RMs: the env's labelled pairs (benchmarks/common.py pools ``fgrlhf env-data``
rounds). "finegrained": the token RM trained with Eq. 4 on (edited, original), where original is each
pair's rejected response and edited its rule-editor minimal edit (pairs the rules leave unchanged carry
no edit and drop out, as in ``train-rm``). "original": the same token RM (same backbone and config)
trained with Eq. 3 on the (chosen, rejected) pairs, the paper's "without fine-grained dataset".
"finegrained_eq3": the edit data with Eq. 3, the loss Eq. 4 is derived from: it separates the data's effect
from Eq. 4's, which is not invariant to a constant shift of the token rewards and, on edits that remove
more tokens than they add, is minimised by a constant negative token reward. All are evaluated with
``fgrlhf eval-rm`` on pairs of the env's eval-split prompts labelled by the gold order, and on alpaca-sim
also on the GPT-4-judged alpaca-7b vs davinci-003 pairs. The synthetic edits come from the annotator that
also fixes global faults (configs/edit-rules-synthetic-global.yaml); ``--edit-rules`` picks another rule file
(configs/edit-rules-synthetic.yaml: local faults only; configs/edit-rules-synthetic-delete.yaml: the
deletion-only annotator), in a work dir of its own by default. Two length-only scorers sit in the same
table, "longer wins" and "shorter wins" (ties ½, eval-rm's ``length_baseline``): an RM no better than one
of them may have learned only length. On ``balanced`` (the length-neutral env, docs/environments.md) the
data pass the pre-registered length checks before any RM trains, and both held-out sets get a
length-matched subset (``heldout_gold_length_matched``, ``heldout_edits_length_matched``: the pairs whose
sides differ by at most 2 tokens), where length cannot decide a pair. A second table gives the faults the annotator fixed, per kind, and
the words each kind of fix added on average.

RM training seeds: ``--seeds``, by default 0 1 2 3 4 (the protocol's five seeds, as in
``training_hours.py``); ``--quick`` trains seed 0 only unless ``--seeds`` is given. Accuracy per eval set:
with one seed, eval-rm's bootstrap 95% CI over pairs; with several seeds, the seed mean, the mean of the
per-seed bootstrap bounds and the sd across seeds (the paper's ± is not specified). RM training time:
wall seconds of ``train-rm`` in a warm Ray session (includes the actors' and DeepSpeed's start-up) and its
optimizer-step loop alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

from benchmarks.common import (
    SIZES,
    add_common_arguments,
    default_workdir,
    eval_rm,
    finish,
    fmt,
    prepare_data,
    pyplot,
    ray_session,
    read_jsonl,
    save_figure,
    train_rm,
)

PAPER = {"finegrained": (85.2, 1.8), "original": (58.2, 1.8)}  # accuracy %, ± (Table 2)
LOSS = {
    "finegrained": "Eq. 4 on (edited, original)",
    "finegrained_eq3": "Eq. 3 on (edited, original)",
    "original": "Eq. 3 on (chosen, rejected)",
}
LOSS_OVERRIDES = {"finegrained": (), "finegrained_eq3": ("loss=eq3",), "original": ()}
PRIMARY = "heldout_gold"
DEFAULT_SEEDS = (0, 1, 2, 3, 4)  # issue 21: five RM seeds by default, as training_hours.py


def summarise(runs: list[dict]) -> dict:
    """One variant's runs (one per seed) -> per-eval-set accuracy, CI, n, spread, plus training time."""
    by_set = {}
    for name in runs[0]["evals"]:
        reports = [run["evals"][name] for run in runs]
        accuracies = [r["accuracy"] for r in reports]
        by_set[name] = {
            "accuracy": statistics.fmean(accuracies),
            "ci_low": statistics.fmean(r["ci_low"] for r in reports),
            "ci_high": statistics.fmean(r["ci_high"] for r in reports),
            "n": reports[0]["n"],
            "seed_sd": statistics.stdev(accuracies) if len(accuracies) > 1 else None,
            "per_seed": accuracies,
        }
    timings = [run["timing"] for run in runs]
    return {
        **by_set[PRIMARY],
        "by_eval_set": by_set,
        "rm_data_records": runs[0]["rm_data_records"],
        "rm_train_wall_seconds": statistics.fmean(t["wall_seconds"] for t in timings),
        "rm_train_loop_seconds": statistics.fmean(t["loop_seconds"] for t in timings),
        "rm_train_steps": timings[0]["steps"],
        "seeds": [t["seed"] for t in timings],
    }


def markdown(result: dict) -> str:
    return "\n\n".join([accuracy_table(result), fixes_table(result["data"])])


def accuracy_table(result: dict) -> str:
    lines = [
        (
            "| RM training data | loss | eval set | accuracy % [95% CI] | seed sd | n | paper % | "
            "RM train s (wall / loop) |"
        ),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for variant in LOSS:
        summary = result[f"accuracy_{variant}"]
        paper = "{} ± {}".format(*PAPER[variant]) if variant in PAPER else "–"
        for name, row in summary["by_eval_set"].items():
            sd = fmt(100 * row["seed_sd"]) if row["seed_sd"] is not None else "–"
            lines.append(
                f"| {variant} ({summary['rm_data_records']} records) | {LOSS[variant]} | {name} | "
                f"{100 * row['accuracy']:.1f} [{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}] | {sd} | "
                f"{row['n']} | {paper if name == PRIMARY else '–'} | "
                f"{summary['rm_train_wall_seconds']:.0f} / {summary['rm_train_loop_seconds']:.1f} |"
            )
    for rule in ("longer", "shorter"):
        for name, baseline in result["length_baselines"].items():
            lines.append(
                f"| {rule} wins (length only, {baseline['tied']} ties ½) | – | {name} | "
                f"{100 * baseline[f'{rule}_wins']:.1f} | – | {baseline['n']} | – | – |"
            )
    return "\n".join(lines)


def fixes_table(data: dict) -> str:
    """Faults fixed in the training edits and the held-out edits, with mean words added per fix."""
    faults = sorted({*data["edit_fixes"], *data["heldout_edit_fixes"]})
    lines = [
        f"Edits by fault ({data['edit_rules']}; mean tokens added per held-out edit: "
        f"{fmt(data['edit_token_length_change_mean'], 2)})",
        "",
        "| fault | fixed, training edits | mean Δ words | in rejected edits (too large) | fixed, held-out edits "
        "| mean Δ words |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for fault in faults:
        train, heldout = data["edit_fixes"].get(fault), data["heldout_edit_fixes"].get(fault)
        cells = [
            str(train["fixed"]) if train else "0",
            f"{train['mean_delta_words']:+.2f}" if train and train["fixed"] else "–",
            str(train["rejected"]) if train else "0",
            str(heldout["fixed"]) if heldout else "0",
            f"{heldout['mean_delta_words']:+.2f}" if heldout and heldout["fixed"] else "–",
        ]
        lines.append(f"| {fault} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    sets = list(result["accuracy_finegrained"]["by_eval_set"])
    fig, ax = plt.subplots(figsize=(2.5 + 2.2 * len(sets), 3.8))
    width = 0.27
    for k, variant in enumerate(LOSS):
        rows = [result[f"accuracy_{variant}"]["by_eval_set"][s] for s in sets]
        xs = [i + (k - 1) * width for i in range(len(sets))]
        acc = [100 * r["accuracy"] for r in rows]
        err = [
            [100 * (r["accuracy"] - r["ci_low"]) for r in rows],
            [100 * (r["ci_high"] - r["accuracy"]) for r in rows],
        ]
        ax.bar(xs, acc, width, yerr=err, capsize=4, label=f"{variant} ({LOSS[variant]})")
        if variant in PAPER:
            ax.axhline(PAPER[variant][0], ls="--", lw=1, color=f"C{k}", label=f"paper, {variant}")
    ax.axhline(50, color="grey", lw=0.8)
    ax.set_xticks(range(len(sets)), sets)
    ax.set_ylabel("pairwise accuracy % (95% CI)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Token RM accuracy, {result['env']}")
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, path)


def length_baselines(evals: dict[str, dict]) -> dict[str, dict]:
    """eval-rm's length-only scorers per eval set (they depend on the pairs, not on the RM)."""
    missing = [name for name, report in evals.items() if "length_baseline" not in report]
    if missing:
        raise SystemExit(f"eval reports of {missing} predate length_baseline: delete WORKDIR/eval and re-run")
    return {name: report["length_baseline"] for name, report in evals.items()}


def run(args: argparse.Namespace) -> dict:
    sizes = SIZES[(args.env, args.quick)]
    workdir = args.workdir or default_workdir(args.env, args.quick, args.edit_rules)
    with ray_session(args.num_cpus):
        prepared = prepare_data(args.env, workdir, sizes, args.edit_rules)
        data = {"finegrained": prepared.edits, "finegrained_eq3": prepared.edits, "original": prepared.pairs}
        runs: dict[str, list[dict]] = {v: [] for v in data}
        for seed in args.seeds:
            for variant, path in data.items():  # interleaved, so machine load affects both alike
                timing = train_rm(
                    prepared,
                    workdir,
                    f"token-{variant}",
                    "token",
                    path,
                    seed,
                    sizes.rm_overrides + LOSS_OVERRIDES[variant],
                )
                evals = {
                    name: eval_rm(
                        prepared, timing["final_dir"], pairs, workdir / "eval" / f"token-{variant}-s{seed}-{name}.json"
                    )
                    for name, pairs in prepared.eval_sets.items()
                }
                # Records train-rm uses (edit records: status "edited" only); it holds 10% of them out itself.
                usable = sum(r.get("status", "edited") == "edited" for r in read_jsonl(path))
                runs[variant].append({"timing": timing, "evals": evals, "rm_data_records": usable})
    return {
        "benchmark": "rm_accuracy",
        "env": args.env,
        "quick": args.quick,
        "workdir": str(workdir),
        "data": prepared.summary,
        "length_baselines": length_baselines(runs["original"][0]["evals"]),
        **{f"accuracy_{variant}": summarise(variant_runs) for variant, variant_runs in runs.items()},
        "paper": {f"accuracy_{v}": {"accuracy": a / 100, "pm": pm / 100} for v, (a, pm) in PAPER.items()},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "rm_accuracy")
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        help=f"RM training seeds (default {' '.join(map(str, DEFAULT_SEEDS))}; --quick: 0)",
    )
    args = parser.parse_args(argv)
    args.seeds = args.seeds or ([0] if args.quick else list(DEFAULT_SEEDS))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run(args)
    finish(args, result, "rm_accuracy", plot, markdown)
    print(json.dumps({f"accuracy_{v}": result[f"accuracy_{v}"]["accuracy"] for v in LOSS}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
