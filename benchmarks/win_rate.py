"""Table 1 of 2406.02756: win rate of each policy against the eval set's reference outputs.

  python benchmarks/win_rate.py --policy NAME=PATH [--policy NAME=PATH ...] [--judge gold|claude]
                                [--env alpaca-sim|synthetic] [--n N] [--eval-set FILE] [--quick]
                                [--out DIR] [--json OUT.json] [--plot OUT.png] [generation flags]

PATH is an HF checkpoint directory (e.g. a ``fgrlhf ppo`` run's ``final/``), ``smollm2`` or ``tiny``. Each
policy answers the same instructions (greedy by default, ``fgrlhf winrate``'s generation) and the judge
compares every answer with the reference (text-davinci-003 on AlpacaEval; the generator's on synthetic):
win rate = 100 · mean(pref − 1) ± its standard error (AlpacaEval's formula, draws count half).

The eval set defaults to the env's held-out split (alpaca-sim: the eval part of the 805 AlpacaEval
instructions); ``--eval-set alpaca_eval/eval_set.jsonl`` (packaged) is the paper's full 805. The
paper's numbers (LLaMA-7B on AlpacaFarm, Claude judge) are printed beside ours for reference: with the
gold judge, small models and another eval split they are not the same measurement.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

from benchmarks.common import publish, pyplot, save_figure
from fgrlhf.config import ModelConfig
from fgrlhf.data.loading import write_jsonl
from fgrlhf.editing.retry import FatalError
from fgrlhf.evaluation.judges import JudgeError
from fgrlhf.evaluation.winrate import (
    add_eval_arguments,
    build_judge_from_args,
    generation_from_args,
    judge_outputs,
    load_eval_records,
)
from fgrlhf.generation import generate_batched
from fgrlhf.models import ModelLoadError

# Table 1: win rate (%) vs davinci-003 ± s.e., Claude judge, LLaMA-7B policies on AlpacaFarm.
PAPER = [
    ("FG token-level PPO", 51.6, 1.8),
    ("FG PPO (edited data, sequence reward)", 51.2, 1.8),
    ("davinci-003 (reference)", 50.0, None),
    ("PPO-RLHF", 46.5, 1.8),
]
QUICK = {"n": 8, "max_new_tokens": 16}


def parse_policy(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(
            f"--policy {text!r}: expected NAME=PATH (PATH: checkpoint dir, smollm2 or tiny)"
        )
    return name, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        type=parse_policy,
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a policy to evaluate (repeat for several)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"at most {QUICK['n']} instructions and {QUICK['max_new_tokens']} new tokens (CI smoke run)",
    )
    parser.add_argument("--out", type=Path, help="per-policy outputs.jsonl (prompt, output, reference, verdict)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON")
    parser.add_argument("--plot", metavar="OUT.png", type=Path, help="bar chart of the win rates")
    add_eval_arguments(parser)


def render(result: dict) -> str:
    s = result["settings"]
    lines = [
        (
            f"Win rate vs the reference outputs; judge {s['judge']}, env {s['env']}, {s['n']} instructions "
            f"({s['eval_set']}), {s['max_new_tokens']} max new tokens"
        ),
        "",
        "| policy | win rate (%) | ± s.e. | wins / losses / draws | gold mean (policy / reference) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in result["policies"]:
        lines.append(
            f"| {row['policy']} | {row['win_rate']:.1f} | {row['stderr']:.1f} | "
            f"{row['wins']} / {row['losses']} / {row['draws']} | "
            f"{row['gold_model_mean']:.3f} / {row['gold_reference_mean']:.3f} |"
        )
    lines += [
        "",
        "Paper, Table 1 (LLaMA-7B, AlpacaFarm, Claude judge, 805 instructions):",
        "",
        "| method | win rate (%) | ± s.e. |",
        "| --- | ---: | ---: |",
    ]
    lines += [f"| {name} | {rate:.1f} | {'' if se is None else f'{se:.1f}'} |" for name, rate, se in PAPER]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()

    ours = result["policies"]
    labels = [r["policy"] for r in ours] + [f"paper: {name}" for name, _, _ in PAPER]
    rates = [r["win_rate"] for r in ours] + [rate for _, rate, _ in PAPER]
    errors = [r["stderr"] for r in ours] + [se or 0.0 for _, _, se in PAPER]
    colours = ["tab:blue"] * len(ours) + ["lightgrey"] * len(PAPER)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(labels) + 1.5))
    ax.barh(labels, rates, xerr=errors, color=colours, capsize=3)
    ax.axvline(50, color="k", lw=0.8, ls="--")
    ax.invert_yaxis()
    ax.set_xlabel(f"win rate vs reference (%), ± s.e. — judge: {result['settings']['judge']}")
    ax.set_xlim(0, 100)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.quick:
        args.n = min(args.n or QUICK["n"], QUICK["n"])
        args.max_new_tokens = min(args.max_new_tokens, QUICK["max_new_tokens"])
    names = [name for name, _ in args.policy]
    if len(set(names)) != len(names):
        parser.error(f"--policy names must be unique, got {names}")

    records = load_eval_records(args.env, args.eval_set, args.n)
    prompts, references = [r["prompt"] for r in records], [r["reference"] for r in records]
    judge = build_judge_from_args(args)
    gen = generation_from_args(args)
    rows = []
    for name, path in args.policy:
        try:
            outputs = generate_batched(ModelConfig(name=path, prompt_format=args.prompt_format), prompts, gen)
        except ModelLoadError as exc:
            print(f"error: policy {name}: {exc}", file=sys.stderr)
            return 2
        try:
            result, per_item = judge_outputs(prompts, outputs, references, judge, args.env)
        except (FatalError, JudgeError) as exc:  # completed judge calls are cached: a re-run resumes
            print(f"error: policy {name}: {exc}", file=sys.stderr)
            return 3
        rows.append({"policy": name, "path": path, **result})
        if args.out:
            write_jsonl(args.out / name / "outputs.jsonl", per_item)
    result = {
        "benchmark": "win_rate",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {
            "judge": args.judge,
            "env": args.env,
            "n": len(records),
            "eval_set": str(args.eval_set) if args.eval_set else f"{args.env} eval split",
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "prompt_format": args.prompt_format,
            "epsilon": args.epsilon,
            "seed": args.seed,
        },
        "policies": rows,
        "paper_table1": [{"method": name, "win_rate": rate, "stderr": se} for name, rate, se in PAPER],
    }
    publish(args, result, plot, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
