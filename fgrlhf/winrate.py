"""Win rate of a model against the eval set's reference outputs (AlpacaFarm/AlpacaEval protocol).

  fgrlhf winrate --model smollm2 --judge gold --n 32 --out runs/winrate-smollm2
  fgrlhf winrate --model runs/env-syn/policy --env synthetic --judge gold --out runs/winrate-syn

The model answers each instruction (greedy by default, HF generate, batched); a judge compares its
output with the reference (text-davinci-003 for AlpacaEval) and gives pref 1 (reference wins), 2 (model
wins) or 1.5 (draw). Win rate = 100 · mean(pref − 1) ± standard error (fgrlhf.algorithms.winrate).

Judges (fgrlhf.judges): ``gold``, the environment's programmatic gold reward on both outputs (scores within
``--epsilon`` are a draw; offline and deterministic, not a human or LLM judge, docs/environments.md);
``claude``, Claude through the anthropic SDK (ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL) with an AlpacaEval
pairwise prompt judged in both orders (disagreement = draw), retried and cached (``--judge-cache``).
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="tiny, smollm2 or an HF checkpoint directory")
    parser.add_argument("--out", type=Path, help="output directory (default: print only)")
    add_eval_arguments(parser)


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Eval-set, generation and judge flags (shared with benchmarks/win_rate.py)."""
    parser.add_argument("--judge", default="gold", choices=("gold", "claude"))
    parser.add_argument("--judge-model", help="claude judge: model name (default: ClaudeJudgeConfig.model)")
    parser.add_argument("--judge-concurrency", type=int, help="claude judge: requests in flight (default 8)")
    parser.add_argument("--judge-cache", type=Path, help="claude judge: SQLite cache (default ~/.cache/fgrlhf/judge.sqlite)")
    parser.add_argument("--env", default="alpaca-sim", choices=("alpaca-sim", "synthetic"),
                        help="whose gold reward and default eval split")
    parser.add_argument("--n", type=int, help="first N instructions of the eval set (default all)")
    parser.add_argument("--eval-set", type=Path, help="JSONL with prompt and reference fields")
    parser.add_argument("--prompt-format", default="chat", choices=("chat", "alpaca"))
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--max-prompt-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epsilon", type=float, default=0.01, help="gold judge: |Δgold| <= eps is a draw")
    parser.add_argument("--seed", type=int, default=0)


def load_eval_records(env: str, eval_set: Path | None, n: int | None) -> list[dict]:
    from fgrlhf.data import load_records
    from fgrlhf.envs import load_env

    module = load_env(env)
    if eval_set is not None:
        # An empty reference would lose every comparison by default: refused (file:line:field). The packaged
        # AlpacaEval set keeps its two empty davinci-003 outputs, which are real outputs of that model.
        records = load_records(eval_set, ("prompt", "reference"))
    elif env == "synthetic":
        records = module.eval_records(module.split_prompts()[1], seed=0)
    else:
        records = module.split_records(module.load_eval_set())[1]
    return records[:n] if n else records


def generate_outputs(model: str, instructions: list[str], args: argparse.Namespace) -> list[str]:
    from tqdm import tqdm

    from fgrlhf.config import ModelConfig
    from fgrlhf.tokenization import encode_prompt, format_prompt
    from fgrlhf.workers.rollout_worker import HFEngine

    engine = HFEngine(ModelConfig(name=model), device=None)
    tok = engine.tokenizer
    ids = [encode_prompt(tok, format_prompt(tok, text, args.prompt_format), args.max_prompt_tokens)
           for text in instructions]
    outputs = []
    for start in tqdm(range(0, len(ids), args.batch_size), desc="generate", unit="batch"):
        out = engine.generate(ids[start:start + args.batch_size], args.max_new_tokens, args.temperature,
                              args.top_p, args.seed + start)
        outputs += [text.strip() for text in tok.batch_decode(out, skip_special_tokens=True)]
    return outputs


def build_judge_from_args(args: argparse.Namespace):
    from fgrlhf.config import ConfigError
    from fgrlhf.judges import ClaudeJudgeConfig, build_judge

    flags = {"concurrency": args.judge_concurrency, "model": args.judge_model,
             "cache": str(args.judge_cache) if args.judge_cache else None}
    try:
        claude = ClaudeJudgeConfig(**{key: value for key, value in flags.items() if value is not None})
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"invalid judge flag: {exc}") from None
    return build_judge(args.judge, args.env, args.epsilon, claude)


def judge_outputs(prompts: list[str], outputs: list[str], references: list[str], judge, env: str) -> tuple[dict, list[dict]]:
    """Win rate of ``outputs`` against ``references`` under ``judge``, plus one row per instruction."""
    from fgrlhf.algorithms.winrate import win_rate
    from fgrlhf.envs import load_env

    verdicts = judge.compare(prompts, references, outputs)  # a = reference, b = model: pref 2 = model wins
    gold = load_env(env).gold_reward
    model_gold, ref_gold = gold(prompts, outputs), gold(prompts, references)
    result = win_rate([v.preference for v in verdicts])
    result.update(judge=judge.name, env=env, gold_model_mean=sum(model_gold) / len(model_gold),
                  gold_reference_mean=sum(ref_gold) / len(ref_gold))
    if judge.summary():
        result["judge_usage"] = judge.summary()
    rows = [{"prompt": p, "output": o, "reference": r, "preference": v.preference, "judge_detail": v.detail,
             "gold_output": gm, "gold_reference": gr}
            for p, o, r, v, gm, gr in zip(prompts, outputs, references, verdicts, model_gold, ref_gold)]
    return result, rows


def evaluate(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    records = load_eval_records(args.env, args.eval_set, args.n)
    prompts = [r["prompt"] for r in records]
    references = [r["reference"] for r in records]
    judge = build_judge_from_args(args)
    outputs = generate_outputs(args.model, prompts, args)
    result, rows = judge_outputs(prompts, outputs, references, judge, args.env)
    result["model"] = args.model
    return result, rows


def main(args: argparse.Namespace) -> int:
    import logging
    import sys

    from fgrlhf.data import write_jsonl
    from fgrlhf.editing.retry import FatalError
    from fgrlhf.judges import JudgeError

    from fgrlhf.preflight import check_data, check_model

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
