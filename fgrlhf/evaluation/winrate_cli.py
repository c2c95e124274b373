"""Win rate of a model against the eval set's reference outputs (AlpacaFarm/AlpacaEval protocol).

  fgrlhf winrate --model smollm2 --judge gold --n 32 --out runs/winrate-smollm2
  fgrlhf winrate --model runs/env-syn/policy --env synthetic --judge gold --out runs/winrate-syn

The model answers each instruction (greedy by default, HF generate, batched); a judge compares its
output with the reference (text-davinci-003 for AlpacaEval) and gives pref 1 (reference wins), 2 (model
wins) or 1.5 (draw). Win rate = 100 · mean(pref − 1) ± standard error (fgrlhf.algorithms.winrate).

Judges (fgrlhf.evaluation.judges): ``gold``, the environment's programmatic gold reward on both outputs (scores within
``--epsilon`` are a draw; offline and deterministic, not a human or LLM judge, docs/environments.md);
``claude``, Claude through the anthropic SDK (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL) with an AlpacaEval
pairwise prompt, each pair once in an order drawn from a hash of it (AlpacaEval's position randomisation),
retried and cached (``--judge-cache``).
Gold scores are reported whatever the judge.

The eval set defaults to the environment's held-out eval split (alpaca-sim: the hash-split part of the 805
AlpacaEval instructions; synthetic: its eval prompts with generator references); ``--eval-set`` takes
any JSONL with ``prompt`` and ``reference``. Prints one JSON line and writes DIR/winrate.json and
DIR/outputs.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fgrlhf.evaluation.winrate import add_eval_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="tiny, smollm2 or an HF checkpoint directory")
    parser.add_argument("--out", type=Path, help="output directory (default: print only)")
    add_eval_arguments(parser)


def main(args: argparse.Namespace) -> int:
    import logging
    import sys

    from fgrlhf.data.loading import write_jsonl
    from fgrlhf.editing.retry import FatalError
    from fgrlhf.evaluation.judges import JudgeError
    from fgrlhf.evaluation.winrate import evaluate
    from fgrlhf.runtime.preflight import check_data, check_model

    check_model(args.model, "--model")
    if args.eval_set is not None:
        check_data(args.eval_set, "--eval-set")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per judge request otherwise
    try:
        result, rows = evaluate(args)
    except (FatalError, JudgeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_jsonl(args.out / "outputs.jsonl", rows)
        (args.out / "winrate.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))
    return 0
