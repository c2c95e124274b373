"""Reward-model training throughput: ``fgrlhf train-rm`` vs TRL's ``RewardTrainer``, same pairs and backbone.

  python benchmarks/rm_throughput.py [--model tiny|smollm2] [--kind sequence|token] [--config RM.yaml]
                                     [--data PAIRS] [--pairs 64] [--steps 4] [--warmup 1] [--quick]
                                     [--cpus 2] [--trl-threads 1] [--json OUT] [key=value ...]

The first ``--pairs`` preference pairs of ``--data`` (default: the packaged AlpacaEval preferences; loaded as
``train-rm`` loads them, edit records as edited/original pairs) are written as prompt/chosen/rejected pairs
and tokenised once, as ``train-rm`` does (prompt format, prompt and response truncation of the config). fgrlhf
runs ``fgrlhf train-rm`` in this process (a local Ray instance of ``--cpus`` CPUs, the config's DeepSpeed
ranks; no held-out pairs, evaluation or checkpoints); TRL's ``RewardTrainer`` (trl==1.12.0) runs in a fresh
process with ``--trl-threads`` torch threads on the same token ids (chosen and rejected, each prompt +
response, pre-tokenised), the same global batch (per-device batch = the micro-batch, accumulation = ranks x
accumulation), learning rate, seed and number of optimizer steps, on a sequence classifier of the same
backbone (``throughput.scalar_model``). ``--kind sequence`` (default) trains fgrlhf's Bradley–Terry
sequence RM, TRL's loss; ``--kind token`` its token RM (Eq. 3 on plain pairs): the same forwards.

A step is timed from the end of the one before (``--warmup`` >= 1 steps are not measured): wall time,
CPU seconds (psutil, user + system: for fgrlhf the process and every process below it, Ray's and the
ranks'; for TRL its process) and the real (unpadded) tokens of its pairs, chosen and rejected, prompts
included (fgrlhf: from its batch order; TRL: its own count, ``num_tokens``). Reported: tokens per second
and CPU seconds per token of each (sums over the measured steps), and
``ratio_cpu_seconds_per_token_fgrlhf_vs_trl`` (> 1: fgrlhf spends more CPU per token).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

from benchmarks import cpu_breakdown
from benchmarks.common import publish, pyplot, save_figure
from benchmarks.throughput import MODELS, model_label, scalar_model

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "tiny": ROOT / "configs" / "rm-sequence-tiny-cpu.yaml",
    "smollm2": ROOT / "configs" / "rm-token-smollm2-cpu.yaml",
}
DATA = ROOT / "fgrlhf" / "resources" / "data" / "alpaca_eval" / "preferences_alpaca7b_vs_davinci003.jsonl"
log = logging.getLogger("benchmarks.rm_throughput")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODELS, default="tiny", help="backbone of both reward models")
    parser.add_argument("--kind", choices=("sequence", "token"), default="sequence", help="fgrlhf's RM kind")
    parser.add_argument("--config", type=Path, help="train-rm config (default: configs/rm-*-cpu.yaml of --model)")
    parser.add_argument("--data", type=Path, default=DATA, help="preference pairs or edit records (train-rm's --data)")
    parser.add_argument("--pairs", type=int, default=64, help="pairs taken from the start of --data")
    parser.add_argument("--steps", type=int, default=4, help="measured optimizer steps per framework")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not measured (>= 1)")
    parser.add_argument("--quick", action="store_true", help="16 pairs, 1 warm-up and 2 measured steps (CI)")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of fgrlhf's local Ray instance")
    parser.add_argument("--trl-threads", type=int, default=1, help="torch threads of the TRL process")
    parser.add_argument("--workdir", type=Path, help="pairs and run directories (default: a temporary directory)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON")
    parser.add_argument("--plot", metavar="OUT.png", type=Path, help="bar chart of tokens/s and CPU s per token")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="RMTrainConfig overrides")


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The config keys both frameworks follow; the user's overrides may change all but the run's length."""
    return [
        f"model.name={args.model}",
        f"kind={args.kind}",
        *args.overrides,
        f"max_steps={args.warmup + args.steps}",
        "eval_fraction=0",
        "save_every=0",
    ]


def write_pairs(source: Path, n: int, path: Path) -> list[dict]:
    """The first ``n`` pairs of ``source`` as prompt/chosen/rejected JSONL at ``path``; returns them."""
    from fgrlhf.reward.data import load_preference_records

    records, _ = load_preference_records(source)
    if len(records) < n:
        raise SystemExit(f"error: --data {source}: {len(records)} pairs, --pairs asks for {n}")
    pairs = [{key: r[key] for key in ("prompt", "chosen", "rejected")} for r in records[:n]]
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    return pairs


def encoded(cfg, pairs: list[dict]) -> list:
    """The pairs' token ids exactly as train-rm's task prepares them."""
    from fgrlhf.models import load_tokenizer
    from fgrlhf.reward.data import encode_pairs

    tokenizer = load_tokenizer(cfg.model.name)
    return encode_pairs(
        pairs, tokenizer, cfg.model.prompt_format, cfg.max_prompt_tokens, cfg.max_response_tokens, False
    )


def pair_tokens(example) -> int:
    return 2 * len(example.prompt_ids) + len(example.chosen_ids) + len(example.rejected_ids)


def summary(walls: list[float], cpus: list[float], tokens: list[int]) -> dict:
    return {
        "tokens_per_second": sum(tokens) / sum(walls),
        "cpu_seconds_per_token": sum(cpus) / sum(tokens),
        "step_seconds_all": walls,
        "cpu_seconds_all": cpus,
        "tokens_all": tokens,
    }


# --- fgrlhf -----------------------------------------------------------------------------------------------
def run_fgrlhf(args: argparse.Namespace, config: Path, pairs_path: Path, cfg, examples: list, out: Path) -> dict:
    from fgrlhf.cli import main as fgrlhf
    from fgrlhf.trainers.supervised import global_batch

    argv = ["train-rm", "--config", str(config), "--data", str(pairs_path), "--out", str(out), "--overwrite"]
    # train-rm prints its result and TRL its logs: stdout is the table.
    with cpu_breakdown.TreeSampler(out / "metrics.jsonl") as sampler, contextlib.redirect_stdout(sys.stderr):
        code = fgrlhf([*argv, "--num-cpus", str(args.cpus), *train_overrides(args)])
    if code:
        raise RuntimeError(f"fgrlhf train-rm exited with {code}")
    ends, series = sampler.mark_times(), sampler.series()
    if len(ends) != cfg.max_steps:
        raise RuntimeError(f"{len(ends)} train-rm steps seen, expected {cfg.max_steps}")
    size = cfg.deepspeed.global_batch_size
    walls, cpus, tokens = [], [], []
    for step in range(args.warmup, cfg.max_steps):
        lo, hi = ends[step - 1], ends[step]
        walls.append(hi - lo)
        cpus.append(
            sum(
                cpu_breakdown.cpu_between(points, lo, hi, sampler.created.get(pid))
                for pid, points in series.items()
                if pid != cpu_breakdown.SAMPLER  # the sampler thread's time is inside the driver's
            )
        )
        _, indices = global_batch(len(examples), size, cfg.seed, step)
        tokens.append(sum(pair_tokens(examples[i]) for i in indices))
    return {**summary(walls, cpus, tokens), "ranks": cfg.deepspeed.world_size, "kind": cfg.kind}


# --- TRL --------------------------------------------------------------------------------------------------
def run_trl(cfg, examples: list, warmup: int, threads: int, workdir: Path) -> dict:
    try:
        import trl
        from trl import RewardConfig, RewardTrainer
    except ImportError as exc:
        raise SystemExit(
            f"error: TRL's RewardTrainer is not importable ({exc}); install it with: pip install 'fgrlhf[bench]'"
        ) from None
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback

    from fgrlhf.models import load_tokenizer

    ds = cfg.deepspeed
    tokenizer = load_tokenizer(cfg.model.name)
    dataset = Dataset.from_dict(
        {
            "chosen_ids": [e.prompt_ids + e.chosen_ids for e in examples],
            "rejected_ids": [e.prompt_ids + e.rejected_ids for e in examples],
        }
    )
    config = RewardConfig(
        output_dir=str(workdir / "trl-rm"),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=cfg.seed,
        learning_rate=ds.lr,
        weight_decay=ds.weight_decay,
        max_grad_norm=ds.grad_clip,
        per_device_train_batch_size=ds.micro_batch_size,
        gradient_accumulation_steps=ds.gradient_accumulation_steps * ds.world_size,
        max_steps=cfg.max_steps,
        max_length=None,
    )

    class StepMarks(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, float, int]] = []
            self.trainer = None

        def mark(self) -> None:
            # RewardTrainer counts the real tokens of every training batch (its `num_tokens` metric).
            self.marks.append((time.perf_counter(), time.process_time(), self.trainer._total_train_tokens))

        def on_train_begin(self, *args, **kwargs):
            self.marks = []
            self.mark()

        def on_step_end(self, *args, **kwargs):
            self.mark()

    marks = StepMarks()
    torch.set_num_threads(threads)
    model = scalar_model(cfg.model, tokenizer, cfg.seed + 1, torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = RewardTrainer(
        model=model, args=config, processing_class=tokenizer, train_dataset=dataset, callbacks=[marks]
    )
    marks.trainer = trainer
    with contextlib.redirect_stdout(sys.stderr):
        trainer.train()
    if len(marks.marks) != cfg.max_steps + 1:
        raise RuntimeError(f"TRL ran {len(marks.marks) - 1} steps, expected {cfg.max_steps}")
    steps = list(zip(marks.marks, marks.marks[1:]))[warmup:]
    return {
        **summary([b[0] - a[0] for a, b in steps], [b[1] - a[1] for a, b in steps], [b[2] - a[2] for a, b in steps]),
        "version": trl.__version__,
        "torch_threads": threads,
    }


def run_trl_apart(*args) -> dict:
    """:func:`run_trl` in a fresh process: its model and optimizer leave before fgrlhf loads its own."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_trl, *args).result()


# --- report -----------------------------------------------------------------------------------------------
def render(result: dict) -> str:
    s, f, t = result["settings"], result["fgrlhf"], result["trl"]
    return "\n".join(
        [
            (
                f"RM training, {model_label(s['model'])}, {s['pairs']} pairs, global batch {s['global_batch']}; "
                f"fgrlhf {s['kind']} RM on {f['ranks']} DeepSpeed rank(s), TRL {t['version']} RewardTrainer on "
                f"{t['torch_threads']} torch thread(s); {s['steps']} measured steps"
            ),
            "",
            "| framework | tokens / s | CPU s / 1k tokens | wall s / step (mean) |",
            "| --- | ---: | ---: | ---: |",
            *[
                f"| {name} | {r['tokens_per_second']:.1f} | {1000 * r['cpu_seconds_per_token']:.3f} | "
                f"{sum(r['step_seconds_all']) / len(r['step_seconds_all']):.2f} |"
                for name, r in (("fgrlhf train-rm", f), (f"TRL {t['version']} RewardTrainer", t))
            ],
            "",
            "| metric | value |",
            "| --- | ---: |",
            f"| ratio_cpu_seconds_per_token_fgrlhf_vs_trl | {result['ratio_cpu_seconds_per_token_fgrlhf_vs_trl']:.2f} |",
            f"| ratio_tokens_per_second_fgrlhf_vs_trl | {result['ratio_tokens_per_second_fgrlhf_vs_trl']:.2f} |",
        ]
    )


def plot(result: dict, path: Path) -> None:
    plt = pyplot()
    names = ["fgrlhf", f"TRL {result['trl']['version']}"]
    runs = [result["fgrlhf"], result["trl"]]
    fig, (speed, cost) = plt.subplots(1, 2, figsize=(8, 3.5))
    speed.bar(names, [r["tokens_per_second"] for r in runs], color=["C0", "tab:grey"])
    speed.set_ylabel("tokens per second")
    cost.bar(names, [1000 * r["cpu_seconds_per_token"] for r in runs], color=["C0", "tab:grey"])
    cost.set_ylabel("CPU seconds per 1k tokens")
    fig.suptitle(f"RM training, {model_label(result['settings']['model'])}", fontsize=10)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.reward.train import RMTrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.quick:
        args.pairs, args.warmup, args.steps = 16, 1, 2
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: a step is timed from the end of the one before")
    config = args.config or CONFIGS[args.model]
    cfg = load_config(RMTrainConfig, config, train_overrides(args))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        pairs_path = workdir / "pairs.jsonl"
        examples = encoded(cfg, write_pairs(args.data, args.pairs, pairs_path))
        if len(examples) < cfg.deepspeed.global_batch_size:
            parser.error(f"--pairs {args.pairs} is below the global batch of {cfg.deepspeed.global_batch_size}")
        trl_result = run_trl_apart(cfg, examples, args.warmup, args.trl_threads, workdir)  # fails fast without trl
        fg_result = run_fgrlhf(args, config, pairs_path, cfg, examples, workdir / "fgrlhf-rm")
    result = {
        "benchmark": "rm_throughput",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {
            "config": str(config),
            "overrides": args.overrides,
            "model": args.model,
            "kind": args.kind,
            "data": str(args.data),
            "pairs": args.pairs,
            "global_batch": cfg.deepspeed.global_batch_size,
            "warmup": args.warmup,
            "steps": args.steps,
            "cpus": args.cpus,
        },
        "fgrlhf": fg_result,
        "trl": trl_result,
        "ratio_cpu_seconds_per_token_fgrlhf_vs_trl": fg_result["cpu_seconds_per_token"]
        / trl_result["cpu_seconds_per_token"],
        "ratio_tokens_per_second_fgrlhf_vs_trl": fg_result["tokens_per_second"] / trl_result["tokens_per_second"],
    }
    publish(args, result, plot, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
