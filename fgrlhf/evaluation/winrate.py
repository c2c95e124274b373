"""Win rate of a model's answers against the eval set's reference outputs (``fgrlhf winrate``,
:mod:`fgrlhf.evaluation.winrate_cli`; ``benchmarks/win_rate.py`` for several policies): eval records, the shared eval
flags, the judge and the scoring."""

from __future__ import annotations

import argparse
from pathlib import Path

from fgrlhf.generation import GenerationSettings


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Eval-set, generation and judge flags (shared with benchmarks/win_rate.py)."""
    parser.add_argument("--judge", default="gold", choices=("gold", "claude"))
    parser.add_argument("--judge-model", help="claude judge: model name (default: ClaudeJudgeConfig.model)")
    parser.add_argument("--judge-concurrency", type=int, help="claude judge: requests in flight (default 8)")
    parser.add_argument(
        "--judge-cache", type=Path, help="claude judge: SQLite cache (default ~/.cache/fgrlhf/judge.sqlite)"
    )
    parser.add_argument(
        "--env",
        default="alpaca-sim",
        choices=("alpaca-sim", "synthetic", "balanced"),
        help="whose gold reward and default eval split",
    )
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
    from fgrlhf.data.loading import load_records
    from fgrlhf.envs import load_env

    module = load_env(env)
    if eval_set is not None:
        # An empty reference would lose every comparison by default: refused (file:line:field). The packaged
        # AlpacaEval set keeps its two empty davinci-003 outputs, which are real outputs of that model.
        records = load_records(eval_set, ("prompt", "reference"))
    elif hasattr(module, "split_prompts"):  # the grammar envs (synthetic, balanced)
        records = module.eval_records(module.split_prompts()[1], seed=0)
    else:
        records = module.split_records(module.load_eval_set())[1]
    return records[:n] if n else records


def generation_from_args(args: argparse.Namespace) -> GenerationSettings:
    """The generation flags of :func:`add_eval_arguments`."""
    from fgrlhf.config import ConfigError

    try:
        return GenerationSettings(
            max_prompt_tokens=args.max_prompt_tokens,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            batch_size=args.batch_size,
            seed=args.seed,
        )
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"invalid generation flag: {exc}") from None


def build_judge_from_args(args: argparse.Namespace):
    from fgrlhf.config import ConfigError
    from fgrlhf.evaluation.judges import ClaudeJudgeConfig, build_judge

    flags = {
        "concurrency": args.judge_concurrency,
        "model": args.judge_model,
        "cache": str(args.judge_cache) if args.judge_cache else None,
    }
    try:
        claude = ClaudeJudgeConfig(**{key: value for key, value in flags.items() if value is not None})
    except ValueError as exc:  # pydantic's ValidationError
        raise ConfigError(f"invalid judge flag: {exc}") from None
    return build_judge(args.judge, args.env, args.epsilon, claude)


def judge_outputs(
    prompts: list[str], outputs: list[str], references: list[str], judge, env: str
) -> tuple[dict, list[dict]]:
    """Win rate of ``outputs`` against ``references`` under ``judge``, plus one row per instruction."""
    from fgrlhf.algorithms.winrate import win_rate
    from fgrlhf.envs import load_env

    verdicts = judge.compare(prompts, references, outputs)  # a = reference, b = model: pref 2 = model wins
    gold = load_env(env).gold_reward
    model_gold, ref_gold = gold(prompts, outputs), gold(prompts, references)
    result = win_rate([v.preference for v in verdicts])
    result.update(
        judge=judge.name,
        env=env,
        gold_model_mean=sum(model_gold) / len(model_gold),
        gold_reference_mean=sum(ref_gold) / len(ref_gold),
    )
    if judge.summary():
        result["judge_usage"] = judge.summary()
    rows = [
        {
            "prompt": p,
            "output": o,
            "reference": r,
            "preference": v.preference,
            "judge_detail": v.detail,
            "gold_output": gm,
            "gold_reference": gr,
        }
        for p, o, r, v, gm, gr in zip(prompts, outputs, references, verdicts, model_gold, ref_gold)
    ]
    return result, rows


def evaluate(args: argparse.Namespace) -> tuple[dict, list[dict]]:
    from fgrlhf.config import ModelConfig
    from fgrlhf.generation import generate_batched

    records = load_eval_records(args.env, args.eval_set, args.n)
    prompts = [r["prompt"] for r in records]
    references = [r["reference"] for r in records]
    judge = build_judge_from_args(args)
    outputs = generate_batched(
        ModelConfig(name=args.model, prompt_format=args.prompt_format), prompts, generation_from_args(args)
    )
    result, rows = judge_outputs(prompts, outputs, references, judge, args.env)
    result["model"] = args.model
    return result, rows
