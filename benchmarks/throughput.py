"""PPO step time and CPU of fgrlhf vs TRL's PPO trainer on the same models, batch, generation length and CPU.

  python benchmarks/throughput.py [--model tiny|smollm2] [--quick] [--steps 5] [--warmup 1] [--cpus 2]
                                  [--trl-threads 1] [--no-async] [--no-floor] [--floor-layouts batched [single]]
                                  [--learner-ranks N [N ...]]
                                  [--sweep [--sweep-lengths 64 128 256] [--sweep-batches 8 16 32]]
                                  [--json OUT] [--plot OUT.png]
                                  [key=value ...]   # PPOTrainConfig overrides of configs/ppo-tiny-cpu.yaml
                                                    # (before --learner-ranks, which would take them in)

Both frameworks get the settings of one ``PPOTrainConfig``: its policy (same weights), its prompts (same
token ids), rollout batch, minibatch, micro-batch, PPO epochs, response length, sampling temperature, KL
coefficient, clip ranges and learning rate. ``--model`` picks the four models of both sides (policy,
reference, reward, value): ``tiny`` (default) the config's random tiny Llama, where fixed costs dominate;
``smollm2`` SmolLM2-135M-Instruct (fgrlhf's embedded default) for all four, where compute dominates: the
reward and value models are its backbone with a seeded random scalar head (fgrlhf: a token RM written to
WORKDIR/rm-smollm2, the critic initialised from it as ``fgrlhf ppo`` does; TRL: a sequence classifier). The
config's batch, prompts and lengths stay as they are, so the two modes differ only in the models and in
fgrlhf's learner layout: ``smollm2`` runs one ZeRO-0 rank per learner, the layout the SmolLM2 CPU profile
(configs/ppo-smollm2-cpu.yaml) ships, since on 2 cores a second rank only duplicates the optimizer step and
adds a gloo all-reduce (``--learner-ranks 1 2`` measures both in one run).

fgrlhf runs as ``fgrlhf ppo`` does (its ``train`` entry point; Ray actors: DeepSpeed policy/critic learners,
rollout, reward, reference) in a local Ray instance of ``--cpus`` CPUs; TRL (``trl.experimental.ppo``,
trl==1.12.0, the last release with PPO) runs in this process with ``--trl-threads`` torch threads (default
1, like each fgrlhf actor: on a shared, oversubscribed CPU more OpenMP threads slow it down). Differences
that remain: TRL trains policy and value in one backward pass and steps its optimizer once per
``gradient_accumulation_steps`` micro-batches; it cannot whiten rewards below a minibatch of 8.

A step is timed from the end of the one before (both frameworks: the loop's own bookkeeping included), so
``--warmup`` is at least 1; fgrlhf runs one more step last, not timed (its actors flush their Ray task events
every 0.1 s here, 1 s by default: those of the very last step can die with the actors). Reported (medians
over ``--steps`` steps):
- seconds per PPO step of each framework and ``ratio_step_time_fgrlhf_vs_trl`` (> 1: fgrlhf is slower);
- ``ray_overhead_fraction``: the part of fgrlhf's step wall time (driver) during which no actor method was
  executing and the driver was not computing (advantages, gold, its metrics log between steps) —
  scheduling, (de)serialisation, object transfer and ``ray.get`` latency. Actor execution intervals come
  from Ray's task events (``ray.timeline()``; they include the actor's own argument deserialisation and
  result storing); their union inside a step is the actor time on the critical path (phases are barriers);
- ``weight_push_mb_per_s``: bytes of the policy's weights pushed to the rollout actor / seconds of the
  driver's ``weight_push`` phase (``_actor`` variant: / the sender's ``push_weights`` execution time);
- CPU-seconds per step (user + system, psutil): for fgrlhf the driver and every process below it (Ray's
  GCS, raylet and all actors), for TRL its process. On a shared machine wall time swings with the other
  users' load; CPU time much less, so ``ratio_cpu_seconds_fgrlhf_vs_trl`` is the steadier comparison;
- the work each framework did: each samples its own responses, so each step records the tokens it generated
  (``generated_tokens_all``: every response up to and including its EOS), TRL also its response positions
  (``response_positions_all``: it keeps the batch padded to its longest response through scoring and
  training), and ``ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl`` compares CPU per token generated
  (a step's cost also has parts that do not grow with its tokens: read it beside the per-step ratio);
- ``breakdown``: where fgrlhf's CPU seconds go (:mod:`benchmarks.cpu_breakdown`; means over the measured
  steps, so its rows add up): each actor process, split by the methods it executed (each phase's actor
  methods, and the CPU outside any method), the driver, and Ray's own processes (GCS, raylet, agents), with
  the trainer's phase timers beside them.

fgrlhf runs twice in the same invocation, from the same weights and prompts: first its synchronous loop
(``ppo.async_rollout=false``, the run compared with TRL, whose loop is synchronous too), then with
``ppo.async_rollout=true`` (batch k+1 generated while the learners train on batch k), reported as
``fgrlhf_async`` with ``ratio_step_time_async_vs_sync`` and ``ratio_cpu_seconds_async_vs_sync``
(``--no-async`` skips it). The script sets ``ppo.async_rollout`` itself: an override of it is ignored.
``--learner-ranks 2 1`` sets the DeepSpeed ranks of both learners; with several values the synchronous loop
is also measured at each further value in the same run (``fgrlhf_by_learner_ranks``: wall and CPU per
step, and the training phase's CPU), the first value being the main run above.

The same invocation times the step's compute floor (:mod:`benchmarks.floor`: one process with
``--trl-threads`` torch threads, the same models, prompts, batch, lengths, minibatches and epochs, no
framework) and reports ``floor`` (with its per-phase CPU seconds and its work counted beside fgrlhf's) and
``ratio_cpu_seconds_fgrlhf_vs_floor`` (and TRL's, ``ratio_cpu_seconds_trl_vs_floor``); ``--no-floor`` skips
it. The floor of these ratios is the **batched** one (the rollout batch in one ``generate`` call, every
forward and backward on length-sorted micro-batches of the config's sizes). ``--floor-layouts batched
single`` also times the per-sequence floor (each sequence generated and scored alone; on a CPU it costs
more than the batched one: 46 CPU-s a step with SmolLM2 on the 2-core box, hence not by default),
reported as ``floor_single`` with ``ratio_cpu_seconds_fgrlhf_vs_floor_single`` and
``ratio_cpu_seconds_trl_vs_floor_single``; the first layout given is the one behind ``floor`` and its ratios.

``--sweep`` measures how the cost grows instead: for every response length of ``--sweep-lengths`` (64 128
256) and rollout batch of ``--sweep-batches`` (8 16 32), ``rollout.max_new_tokens`` and
``ppo.rollout_batch_size`` set so, fgrlhf's synchronous loop, TRL and the floor (the first of
``--floor-layouts``, unless ``--no-floor``) are timed as above: wall and CPU seconds per step side by side,
as a table and a plot (CPU and wall against the length, a line per framework and batch, and against the
batch, a line per framework and length); a second table gives each point's work (tokens generated, TRL's
response positions), CPU per token, and fgrlhf's and the floor's CPU by phase (rollout, scoring forwards,
training, the rest). The batches must be multiples of ``ppo.step_batch_size``.
Each point measured is kept in ``--workdir`` (``sweep/LENGTHxBATCH.json``, with its date), so a sweep that was
interrupted continues at the next point when re-run with the same ``--workdir`` and settings (other settings
there are refused); a resumed sweep's table says how many points an earlier run measured, and when.

Before each framework's run and after the last, :mod:`benchmarks.machine_speed` times a fixed one-thread
matmul probe, the same probe in two processes at once (how much two one-thread processes, like fgrlhf's two
learners, slow each other), and reads the VM's CPU steal (``machine``; in a sweep, each point's ``machine``,
and a third table): the frameworks run one after the other, so a ratio also holds whatever the machine's
speed did between their runs, and the probe's spread says how much that was.

Without ``trl`` importable the script stops with an error; it never reports a TRL number it did not measure.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

if TYPE_CHECKING:
    import torch

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

from benchmarks import cpu_breakdown, floor, machine_speed
from benchmarks.common import open_pipeline, publish, pyplot, ray_session, save_figure, write_json

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ppo-tiny-cpu.yaml"
MODELS = ("tiny", "smollm2")
SMOLLM2_RM = "rm-smollm2"  # fgrlhf's SmolLM2 token RM, under the work dir
log = logging.getLogger("benchmarks.throughput")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=CONFIG, help="PPO config both frameworks follow")
    parser.add_argument(
        "--model",
        choices=MODELS,
        default="tiny",
        help="policy, reference, reward and value models of both frameworks: tiny (the config's "
        "random tiny Llama) or smollm2 (SmolLM2-135M-Instruct, random scalar heads)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 warm-up and 1 measured step, 8 new tokens, 1 learner rank each (CI smoke run)",
    )
    parser.add_argument("--steps", type=int, default=5, help="measured PPO steps per framework")
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="steps run first and not measured (>= 1: a step is timed from the end of the last)",
    )
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of fgrlhf's local Ray instance")
    parser.add_argument(
        "--trl-threads",
        type=int,
        default=1,
        help="torch threads of the TRL process (fgrlhf's actors use 1 thread each)",
    )
    parser.add_argument(
        "--no-async",
        action="store_true",
        help="measure only fgrlhf's synchronous loop (default: also ppo.async_rollout=true, same run)",
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the compute floor (benchmarks/floor.py) and its ratios"
    )
    parser.add_argument(
        "--floor-layouts",
        nargs="+",
        choices=floor.LAYOUTS,
        default=["batched"],
        metavar="LAYOUT",
        help="floor layouts to time (batched, single); the first is the floor of ratio_cpu_seconds_*_vs_floor, "
        "each further one is reported as floor_LAYOUT with its own ratios (default: batched)",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="time fgrlhf (sync), TRL and the floor at every response length x rollout batch of the sweep",
    )
    parser.add_argument("--sweep-lengths", type=int, nargs="+", default=[64, 128, 256], metavar="T")
    parser.add_argument("--sweep-batches", type=int, nargs="+", default=[8, 16, 32], metavar="B")
    parser.add_argument(
        "--learner-ranks",
        type=int,
        nargs="+",
        metavar="N",
        help="DeepSpeed ranks of the policy and the critic learner (default: the config's); several values: "
        "fgrlhf's synchronous loop is measured at each, the first being the main run",
    )
    parser.add_argument(
        "--workdir", type=Path, help="run directories and the sweep's measured points (default: a temporary directory)"
    )
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON")
    parser.add_argument("--plot", metavar="OUT.png", type=Path, help="bar chart of the step times")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="PPOTrainConfig overrides")


def load_cfg(
    args: argparse.Namespace, workdir: Path, learner_ranks: int | None = None, sweep: tuple[int, int] | None = None
):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    steps = 1 if args.quick else args.steps
    extra = (
        ["rollout.max_new_tokens=8", "policy_learner.world_size=1", "critic_learner.world_size=1"] if args.quick else []
    )
    if args.model == "smollm2":  # before the user's overrides, which may still change them
        extra = [
            f"policy.name={args.model}",
            f"reward.model={workdir / SMOLLM2_RM}",
            "policy_learner.world_size=1",
            "critic_learner.world_size=1",
            *extra,
        ]
    if learner_ranks is not None:
        extra += [f"policy_learner.world_size={learner_ranks}", f"critic_learner.world_size={learner_ranks}"]
    point = [f"rollout.max_new_tokens={sweep[0]}", f"ppo.rollout_batch_size={sweep[1]}"] if sweep else []
    # Checkpoints are not part of a step (the final one is saved after the trailing step).
    return load_config(
        PPOTrainConfig,
        args.config,
        [*extra, *args.overrides, *point, f"steps={args.warmup + steps + 1}", "save_every=0"],
    )


def run_floor(cfg, workdir: Path, warmup: int, threads: int, layout: str = "batched") -> dict:
    """The floor's steps: as many measured as fgrlhf's (it needs no trailing step)."""
    result = floor.run_floor_apart(cfg.model_copy(update={"steps": cfg.steps - 1}), workdir, warmup, threads, layout)
    return result | {
        "cpu_seconds_per_generated_token": per_token(result["cpu_seconds_all"], result["generated_tokens_all"])
    }


def measured(values: list, warmup: int, total: int) -> list:
    """fgrlhf's timed steps: after the warm-up, before the trailing step."""
    return values[warmup : total - 1]


def generated_work(query_responses: torch.Tensor, context_length: int, eos_id: int) -> tuple[int, int]:
    """(tokens generated, response positions) of a batch of left-padded queries followed by their padded
    responses: each response's tokens up to and including its first EOS (what a PPO step scores and trains
    on), and the batch's rows × its response width (what a step that keeps the padding computes)."""
    from fgrlhf.workers.rollout_worker import strip_after_eos

    responses = query_responses[:, context_length:]
    return sum(len(strip_after_eos(row.tolist(), eos_id)) for row in responses), responses.numel()


def per_token(cpu_seconds: list[float], tokens: list[int]) -> float:
    """Median over steps of a step's CPU seconds per token it generated."""
    return statistics.median(c / t for c, t in zip(cpu_seconds, tokens, strict=True))


def save_token_rm(cfg, path: Path) -> None:
    """A token RM on the policy's backbone with a seeded random head (the same head init as fgrlhf's RMs)."""
    import shutil

    import torch

    from fgrlhf.models import load_tokenizer
    from fgrlhf.reward.model import build_reward_model

    shutil.rmtree(path, ignore_errors=True)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 1)
        model = build_reward_model("token", cfg.policy)
    model.save_pretrained(path, load_tokenizer(cfg.policy.name))


def policy_push_bytes(cfg) -> int:
    """Bytes of one weight push: the policy's parameters (a tied weight once, as the learner pushes them) in
    the learner's dtype."""
    import torch

    from fgrlhf.models import load_causal_lm

    model = load_causal_lm(cfg.policy)
    dtype = torch.bfloat16 if cfg.policy_learner.bf16 else next(model.parameters()).dtype
    return sum(p.numel() for p in model.parameters()) * dtype.itemsize


# --- fgrlhf -----------------------------------------------------------------------------------------------
def union_seconds(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of ``intervals`` clipped to [lo, hi]."""
    total, end = 0.0, lo
    for start, stop in sorted((max(a, lo), min(b, hi)) for a, b in intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def actor_intervals(events: list[dict]) -> list[tuple[str, float, float]]:
    """(method, start, end) in seconds since the epoch of every actor-method execution in a Ray timeline."""
    out = []
    for event in events:
        cat = event.get("cat", "")
        if cat.startswith("task::") and event.get("ph") == "X":
            start = event["ts"] / 1e6
            out.append((cat.removeprefix("task::"), start, start + event["dur"] / 1e6))
    return out


def with_rollout_mode(cfg, async_rollout: bool):
    """``cfg`` with ``ppo.async_rollout`` set (everything else shared by the sync and async runs)."""
    return cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"async_rollout": async_rollout})})


def run_fgrlhf(cfg, workdir: Path, warmup: int, cpus: int) -> dict:
    import shutil

    import ray

    from fgrlhf.trainers.ppo.trainer import train

    run_dir = workdir / ("fgrlhf-async" if cfg.ppo.async_rollout else "fgrlhf")
    shutil.rmtree(run_dir, ignore_errors=True)  # every measurement is a fresh run
    push_bytes = policy_push_bytes(cfg)
    # An actor flushes its task events every second by default, and the trainer's shutdown kills the actors
    # (ray.kill drops what is still buffered), so with sub-second steps a timed step's events could be lost;
    # a 0.1 s flush keeps everything older than the trailing step.
    with ray_session(cpus, _system_config={"task_events_report_interval_ms": 100}):
        # The sampler marks each step's end by the trainer's metrics.jsonl gaining its line.
        with cpu_breakdown.TreeSampler(run_dir / "metrics.jsonl") as sampler:
            train(cfg, run_dir)
        events = ray.timeline()
        actors = cpu_breakdown.ray_actors(events)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ends = sampler.mark_times()
    if len(ends) != len(records) or len(records) != cfg.steps:
        raise RuntimeError(f"{len(records)} metrics records and {len(ends)} step ends seen, expected {cfg.steps}")
    series = sampler.series()
    intervals = actor_intervals(events)
    rows, parts = [], []
    windows = [(ends[i - 1], ends[i]) if i else None for i in range(len(ends))]
    for record, window in measured(list(zip(records, windows, strict=True)), warmup, cfg.steps):
        lo, hi = window
        started = {name.rsplit(".", 1)[-1] for name, a, _ in intervals if lo <= a < hi}
        missing = {"generate", "train", "push_weights"} - started
        if missing:
            raise RuntimeError(
                f"Ray's task events miss actor methods {sorted(missing)} in step {record['step']}: "
                "cannot time the actors"
            )
        pushes = [b - a for name, a, b in intervals if name.endswith(".push_weights") and lo <= a < hi]
        wall = hi - lo
        actor = union_seconds([(a, b) for _, a, b in intervals if a < hi and b > lo], lo, hi)
        # The driver's own work: advantages, gold, and the loop between steps (metrics log, progress bar).
        driver = (
            record["phase_seconds"]["advantages"]
            + record["phase_seconds"].get("gold", 0.0)
            + max(wall - record["step_seconds"], 0.0)
        )
        part = cpu_breakdown.step_breakdown(
            series, sampler.created, sampler.labels, actors, os.getpid(), lo, hi, parents=sampler.parents
        )
        parts.append(part)
        rows.append(
            {
                "step": record["step"],
                "wall_s": wall,
                "cpu_s": part["total_cpu_s"],
                "generated_tokens": round(record["response_len_mean"] * cfg.ppo.rollout_batch_size),
                "actor_critical_path_s": actor,
                "driver_compute_s": driver,
                "phase_seconds": record["phase_seconds"],
                "push_actor_s": max(pushes),
                "rollout_staleness": record["rollout_staleness"],
            }
        )
    median = statistics.median
    wall = median(r["wall_s"] for r in rows)
    cpu_all, tokens = [r["cpu_s"] for r in rows], [r["generated_tokens"] for r in rows]
    phases = {name: median(r["phase_seconds"][name] for r in rows) for name in rows[0]["phase_seconds"]}
    return {
        "async_rollout": cfg.ppo.async_rollout,
        "rollout_staleness": [r["rollout_staleness"] for r in rows],
        "step_seconds": wall,
        "step_seconds_all": [r["wall_s"] for r in rows],
        "cpu_seconds_per_step": median(cpu_all),
        "cpu_seconds_all": cpu_all,
        "generated_tokens_all": tokens,
        "cpu_seconds_per_generated_token": per_token(cpu_all, tokens),
        "phase_seconds": phases,
        "ray_overhead_fraction": median(
            (r["wall_s"] - r["actor_critical_path_s"] - r["driver_compute_s"]) / r["wall_s"] for r in rows
        ),
        "non_actor_fraction": median((r["wall_s"] - r["actor_critical_path_s"]) / r["wall_s"] for r in rows),
        "weight_push_bytes": push_bytes,
        "weight_push_mb_per_s": push_bytes / 1e6 / phases["weight_push"],
        "weight_push_actor_mb_per_s": push_bytes / 1e6 / median(r["push_actor_s"] for r in rows),
        "steps": rows,
        "breakdown": cpu_breakdown.mean_breakdown(
            parts, [r["phase_seconds"] for r in rows], [r["wall_s"] for r in rows]
        ),
    }


# --- TRL --------------------------------------------------------------------------------------------------
def scalar_model(model_cfg, tokenizer, seed: int, dtype):
    """TRL's reward/value model: ``model_cfg``'s backbone with a seeded random scalar head (a sequence
    classifier; tiny: random backbone too)."""
    import torch
    from transformers import AutoModelForSequenceClassification, LlamaForSequenceClassification

    from fgrlhf.models import smollm2_checkpoint, tiny_llama_config

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if model_cfg.name == "tiny":
            config = tiny_llama_config(model_cfg, tokenizer)
            config.num_labels = 1
            return LlamaForSequenceClassification(config)
        source = smollm2_checkpoint() if model_cfg.name == "smollm2" else model_cfg.name
        return AutoModelForSequenceClassification.from_pretrained(source, num_labels=1, dtype=dtype)


def run_trl(cfg, workdir: Path, warmup: int, threads: int) -> dict:
    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as exc:
        raise SystemExit(
            f"error: TRL's PPO trainer is not importable ({exc}); "
            "install it with: pip install 'fgrlhf[bench]' (trl==1.12.0)"
        ) from None
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.experimental.ppo import ppo_trainer

    from fgrlhf.models import load_causal_lm, load_tokenizer
    from fgrlhf.trainers.ppo.inputs import load_prompt_ids

    ppo, ds = cfg.ppo, cfg.policy_learner
    total = cfg.steps - 1  # fgrlhf's trailing untimed step is for Ray's task events: TRL needs none
    tokenizer = load_tokenizer(cfg.policy.name)
    tokenizer.padding_side = "left"  # TRL generates from the collated (left-padded) queries
    policy, ref = load_causal_lm(cfg.policy, tokenizer), load_causal_lm(cfg.policy, tokenizer)

    _, prompt_ids = load_prompt_ids(cfg)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    minibatch_per_rank = ppo.step_batch_size // ds.world_size
    config = PPOConfig(
        output_dir=str(workdir / "trl"),
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        bf16=False,
        seed=cfg.seed,
        learning_rate=ds.lr,
        total_episodes=total * ppo.rollout_batch_size,
        per_device_train_batch_size=ds.micro_batch_size,
        gradient_accumulation_steps=ppo.rollout_batch_size // ds.micro_batch_size,
        num_mini_batches=ppo.rollout_batch_size // ppo.step_batch_size,
        num_ppo_epochs=ppo.epochs,
        response_length=cfg.rollout.max_new_tokens,
        temperature=cfg.rollout.temperature,
        stop_token="eos",
        kl_coef=ppo.kl_coef,
        kl_estimator=ppo.kl_estimator if ppo.kl_estimator in ("k1", "k3") else "k1",
        cliprange=ppo.clip_eps,
        cliprange_value=ppo.value_clip_eps,
        vf_coef=ppo.vf_coef,
        gamma=ppo.gamma,
        lam=ppo.lam,
        whiten_rewards=ppo.whiten_rewards and minibatch_per_rank >= 8,
        num_sample_generations=0,
        local_rollout_forward_batch_size=ppo.rollout_batch_size,
    )

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, *args, **kwargs):
            self.marks, self.cpu = [time.perf_counter()], [time.process_time()]

        def on_step_end(self, *args, **kwargs):
            self.marks.append(time.perf_counter())
            self.cpu.append(time.process_time())

    # TRL samples its own responses: count the work each step's rollout gave it (one call per step).
    rollouts: list[tuple[int, int]] = []
    batch_generation = ppo_trainer.batch_generation

    def counted_batch_generation(model, queries, *args, **kwargs):
        query_responses, logits = batch_generation(model, queries, *args, **kwargs)
        rollouts.append(generated_work(query_responses, queries.shape[1], tokenizer.eos_token_id))
        return query_responses, logits

    timer = StepTimes()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = PPOTrainer(
            args=config,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref,
            reward_model=scalar_model(cfg.policy, tokenizer, cfg.seed + 1, policy.dtype),
            value_model=scalar_model(cfg.policy, tokenizer, cfg.seed + 2, policy.dtype),
            train_dataset=dataset,
            eval_dataset=dataset.select(range(2)),
            callbacks=[timer],
        )
        with (
            contextlib.redirect_stdout(sys.stderr),  # TRL prints its logs and samples; stdout is the table
            mock.patch.object(ppo_trainer, "batch_generation", counted_batch_generation),
        ):
            trainer.train()
    finally:
        torch.set_num_threads(before)
    if len(timer.marks) != total + 1 or len(rollouts) != total:
        raise RuntimeError(f"TRL ran {len(timer.marks) - 1} steps and {len(rollouts)} rollouts, expected {total}")
    steps = [b - a for a, b in itertools.pairwise(timer.marks)][warmup:]
    cpu = [b - a for a, b in itertools.pairwise(timer.cpu)][warmup:]
    tokens = [n for n, _ in rollouts[warmup:]]
    return {
        "version": trl.__version__,
        "step_seconds": statistics.median(steps),
        "step_seconds_all": steps,
        "cpu_seconds_per_step": statistics.median(cpu),
        "cpu_seconds_all": cpu,
        "generated_tokens_all": tokens,
        # TRL keeps each batch padded to its longest response through scoring and training
        "response_positions_all": [n for _, n in rollouts[warmup:]],
        "cpu_seconds_per_generated_token": per_token(cpu, tokens),
        "whiten_rewards": config.whiten_rewards,
        "torch_threads": threads,
    }


def run_trl_apart(cfg, workdir: Path, warmup: int, threads: int) -> dict:
    """:func:`run_trl` in a fresh process: TRL's models and optimizer states (GBs with SmolLM2, which the
    allocator would keep) leave with it before fgrlhf's actors load theirs, and the driver fgrlhf's CPU is
    measured in carries nothing of TRL."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run_trl, cfg, workdir, warmup, threads).result()


# --- report -----------------------------------------------------------------------------------------------
def render(result: dict) -> str:
    f, t, a = result["fgrlhf"], result["trl"], result.get("fgrlhf_async")
    s = result["settings"]
    floors = floors_of(result)
    lines = [
        (
            f"PPO step time, {model_label(s['policy'])}, rollout batch {s['rollout_batch_size']}, minibatch {s['step_batch_size']}, "
            f"{s['epochs']} epochs, {s['max_new_tokens']} new tokens; fgrlhf: {s['cpus']} Ray CPUs, "
            f"{s['learner_ranks']} DeepSpeed rank(s) per learner; TRL: {s['trl_threads']} torch thread(s); "
            f"median of {s['steps']} steps"
        ),
        "",
        "| framework | wall s / PPO step (median) | CPU s / PPO step (median) | tokens generated / step (median) "
        "| CPU ms / generated token (median) | steps measured |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *[
            f"| {name} | {run['step_seconds']:.2f} | {run['cpu_seconds_per_step']:.2f} | "
            f"{statistics.median(run['generated_tokens_all']):.0f} | "
            f"{run['cpu_seconds_per_generated_token'] * 1e3:.1f} | {len(run['step_seconds_all'])} |"
            for name, run in (
                ("fgrlhf (Ray + DeepSpeed)", f),
                *([("fgrlhf, async rollout (one step off-policy)", a)] if a else []),
                (f"TRL {t['version']} PPOTrainer", t),
                *[(f"floor, {run['layout']} (one process)", run) for run in floors.values()],
            )
        ],
        "",
        "| metric | value |",
        "| --- | ---: |",
        f"| ratio_step_time_fgrlhf_vs_trl | {result['ratio_step_time_fgrlhf_vs_trl']:.2f} |",
        f"| ratio_cpu_seconds_fgrlhf_vs_trl | {result['ratio_cpu_seconds_fgrlhf_vs_trl']:.2f} |",
        (
            "| ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl (each samples its own responses) | "
            f"{result['ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl']:.2f} |"
        ),
        (
            "| TRL response positions / step (its batch padded to the longest response; median) | "
            f"{statistics.median(t['response_positions_all']):.0f} |"
        ),
        *[
            f"| ratio_cpu_seconds_{who}_vs_{key} ({run['layout']}) | "
            f"{result[f'ratio_cpu_seconds_{who}_vs_{key}']:.2f} |"
            for key, run in floors.items()
            for who in ("fgrlhf", "trl")
        ],
        *(
            [
                f"| ratio_step_time_async_vs_sync | {result['ratio_step_time_async_vs_sync']:.2f} |",
                f"| ratio_cpu_seconds_async_vs_sync | {result['ratio_cpu_seconds_async_vs_sync']:.2f} |",
            ]
            if a
            else []
        ),
        f"| ray_overhead_fraction | {f['ray_overhead_fraction']:.3f} |",
        f"| non-actor fraction (incl. driver advantages) | {f['non_actor_fraction']:.3f} |",
        f"| weight_push_mb_per_s (driver phase) | {f['weight_push_mb_per_s']:.1f} |",
        f"| weight push MB/s (sender execution) | {f['weight_push_actor_mb_per_s']:.1f} |",
        f"| weight push size (MB) | {f['weight_push_bytes'] / 1e6:.1f} |",
        "",
        "| fgrlhf phase | sync s (median) |" + (" async s (median) |" if a else ""),
        "| --- | ---: |" + (" ---: |" if a else ""),
        *[
            f"| {name} | {seconds:.3f} |" + (f" {a['phase_seconds'].get(name, 0.0):.3f} |" if a else "")
            for name, seconds in f["phase_seconds"].items()
        ],
        *(
            [
                "",
                "| DeepSpeed ranks per learner (sync) | wall s / step | CPU s / step | train phase s | "
                "train CPU s (actors) | Ray processes CPU s |",
                "| ---: | ---: | ---: | ---: | ---: | ---: |",
                *[
                    f"| {ranks} | {r['step_seconds']:.2f} | {r['cpu_seconds_per_step']:.2f} | "
                    f"{r['train_phase_seconds']:.2f} | {r['train_actor_cpu_seconds']:.2f} | "
                    f"{r['ray_processes_cpu_seconds']:.2f} |"
                    for ranks, r in result["fgrlhf_by_learner_ranks"].items()
                ],
            ]
            if "fgrlhf_by_learner_ranks" in result
            else []
        ),
        *[part for run in floors.values() for part in ("", floor.render(run))],
        "",
        cpu_breakdown.render(f["breakdown"]),
        "",
        machine_speed.render(result["machine"]),
    ]
    return "\n".join(lines)


def floors_of(result: dict) -> dict[str, dict]:
    """The result's floors by key: ``floor`` (the ratios' floor) and ``floor_LAYOUT`` for further layouts."""
    keys = ["floor", *(f"floor_{layout}" for layout in floor.LAYOUTS)]
    return {key: result[key] for key in keys if key in result}


def model_label(name: str) -> str:
    return {"tiny": "tiny Llama", "smollm2": "SmolLM2-135M-Instruct"}.get(name, name)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()

    f, t = result["fgrlhf"], result["trl"]
    trl_label = f"TRL {t['version']}"
    fig, (wall, cpu) = plt.subplots(1, 2, figsize=(10, 4))
    color = {name: f"C{i}" for i, name in enumerate(f["phase_seconds"])}  # a phase keeps its colour in both panels
    runs = [("fgrlhf", f)] + ([("fgrlhf async", result["fgrlhf_async"])] if "fgrlhf_async" in result else [])
    for i, (bar, run) in enumerate(runs):  # stacked phases, the rest is the loop itself; legend from the first
        bottom = 0.0
        for name, seconds in run["phase_seconds"].items():
            wall.bar(bar, seconds, bottom=bottom, label=None if i else name, color=color.get(name, "C7"))
            bottom += seconds
        rest = max(run["step_seconds"] - bottom, 0.0)
        wall.bar(bar, rest, bottom=bottom, label=None if i else "other", color="lightgrey")
    wall.bar(trl_label, t["step_seconds"], color="tab:grey")
    for i, run in enumerate(floors_of(result).values()):
        wall.bar(f"floor ({run['layout']})", run["step_seconds"], color="tab:olive" if i == 0 else "darkkhaki")
    wall.set_ylabel("wall seconds per PPO step (median)")
    wall.legend(fontsize=7, loc="upper right")
    b = f["breakdown"]  # fgrlhf: stacked by where the CPU goes (means of the same steps)
    parts = [
        *[(f"{name} (actors)", phase["actor_cpu_s"], color[name]) for name, phase in b["phases"].items()],
        ("other actor methods", b["other_methods_cpu_s"], "C7"),
        ("actors outside methods", b["actors_outside_methods_cpu_s"], "C8"),
        ("processes the actors started", b["actors_children_cpu_s"], "C6"),
        ("driver", b["driver_cpu_s"], "C9"),
        ("Ray processes", b["ray_processes_cpu_s"], "black"),
    ]
    bottom = 0.0
    for name, seconds, shade in parts:
        if seconds > 0:
            cpu.bar("fgrlhf (mean)", seconds, bottom=bottom, label=name, color=shade)
            bottom += seconds
    cpu.bar(f"{trl_label} (median)", t["cpu_seconds_per_step"], color="tab:grey")
    for i, run in enumerate(floors_of(result).values()):
        cpu.bar(
            f"floor ({run['layout']}, median)",
            run["cpu_seconds_per_step"],
            color="tab:olive" if i == 0 else "darkkhaki",
        )
    cpu.set_ylabel("CPU seconds per PPO step")
    cpu.legend(fontsize=7, loc="upper right")
    fig.suptitle(
        f"PPO step, {model_label(result['settings']['policy'])} ({result['settings']['cpus']} Ray CPUs / "
        f"{result['settings']['trl_threads']} TRL thread)",
        fontsize=10,
    )
    save_figure(fig, path)


# --- sweep ------------------------------------------------------------------------------------------------
SWEPT = ("fgrlhf", "trl", "floor")
SWEPT_FIELDS = (  # what a point keeps of each framework's run
    "step_seconds",
    "step_seconds_all",
    "cpu_seconds_per_step",
    "cpu_seconds_all",
    "generated_tokens_all",
    "cpu_seconds_per_generated_token",
)
# Bumped when a point's row gains fields: a sweep never mixes rows of two formats.
SWEEP_ROW_FORMAT = 4


PHASE_GROUPS = {  # each side's phases under the coarse ones of the sweep's table; everything else is "other"
    "rollout": {"fgrlhf": ("rollout",), "floor": ("generate",)},
    "score": {"fgrlhf": ("score",), "floor": ("logprobs", "reference", "reward", "value")},
    "train": {"fgrlhf": ("train",), "floor": ("train_policy", "train_critic")},
}


def phase_groups(name: str, phase_cpu_seconds: dict[str, float]) -> dict[str, float]:
    """``name``'s (fgrlhf or floor) CPU seconds per phase summed into :data:`PHASE_GROUPS` and ``other``."""
    groups = {group: sum(phase_cpu_seconds[p] for p in sides[name]) for group, sides in PHASE_GROUPS.items()}
    return groups | {"other": sum(phase_cpu_seconds.values()) - sum(groups.values())}


def phase_cpu(breakdown: dict) -> dict[str, float]:
    """fgrlhf's CPU seconds per step by phase (its actors' methods of the phase) and ``rest`` (the driver, Ray's
    processes, actors outside their methods), which add up to the step's."""
    phases = {name: phase["actor_cpu_s"] for name, phase in breakdown["phases"].items()}
    return phases | {"rest": breakdown["total_cpu_s"] - sum(phases.values())}


def run_sweep(args: argparse.Namespace, workdir: Path) -> dict:
    """fgrlhf's synchronous loop, TRL and the floor at every (response length, rollout batch). Each point is a
    stage of the work dir (``sweep/LENGTHxBATCH.json``, with the date it was measured): a sweep re-run into the
    same ``--workdir`` continues at the first point not measured, and one with other settings is refused."""
    points = sorted(itertools.product(set(args.sweep_lengths), set(args.sweep_batches)))
    cfgs = [load_cfg(args, workdir, sweep=point) for point in points]  # all checked before the first run
    pipeline = open_pipeline(workdir)
    # What a point's figures depend on besides its length, batch and the config file's bytes.
    settings = {
        name: getattr(args, name)
        for name in ("model", "overrides", "quick", "steps", "warmup", "cpus", "trl_threads", "no_floor")
    }
    settings["floor_layout"] = args.floor_layouts[0]
    settings["row_format"] = SWEEP_ROW_FORMAT
    (workdir / "sweep").mkdir(exist_ok=True)
    outputs, fresh = [], set()
    for (length, batch), cfg in zip(points, cfgs, strict=True):
        out = workdir / "sweep" / f"{length}x{batch}.json"

        def step(cfg=cfg, out=out) -> None:
            measure_point(args, workdir, cfg, out)
            fresh.add(out)

        outputs.append(pipeline.stage(out, step, key=[settings, length, batch], inputs=(Path(args.config),)))
    rows = [{**json.loads(out.read_text()), "kept_from_earlier_run": out not in fresh} for out in outputs]
    return {
        "benchmark": "throughput_sweep",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {
            "config": str(args.config),
            "overrides": args.overrides,
            "model": args.model,
            "policy": cfgs[0].policy.name,
            "cpus": args.cpus,
            "trl_threads": args.trl_threads,
            "learner_ranks": cfgs[0].policy_learner.world_size,
            "warmup": args.warmup,
            "steps": cfgs[0].steps - args.warmup - 1,
            "step_batch_size": cfgs[0].ppo.step_batch_size,
            "epochs": cfgs[0].ppo.epochs,
            "lengths": args.sweep_lengths,
            "batches": args.sweep_batches,
        },
        "sweep": rows,
        "cpu_growth": cpu_growth(rows),
        "token_growth": token_growth(rows),
    }


def measure_point(args: argparse.Namespace, workdir: Path, cfg, out: Path) -> None:
    """One sweep point: TRL, the floor and fgrlhf's synchronous loop back to back, their ratios, into ``out``."""
    length, batch = cfg.rollout.max_new_tokens, cfg.ppo.rollout_batch_size
    log.info("sweep point: %d new tokens, rollout batch %d", length, batch)
    watch = machine_speed.MachineWatch()
    watch.mark("trl")
    runs = {"trl": run_trl_apart(cfg, workdir, args.warmup, args.trl_threads)}
    if cfg.reward.model == str(workdir / SMOLLM2_RM) and not (workdir / SMOLLM2_RM).is_dir():
        save_token_rm(cfg, workdir / SMOLLM2_RM)
    if not args.no_floor:
        watch.mark("floor")
        runs["floor"] = run_floor(cfg, workdir, args.warmup, args.trl_threads, args.floor_layouts[0])
    watch.mark("fgrlhf")
    runs["fgrlhf"] = run_fgrlhf(with_rollout_mode(cfg, False), workdir, args.warmup, args.cpus)
    watch.mark("end")
    row: dict = {
        "max_new_tokens": length,
        "rollout_batch_size": batch,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": watch.summary(),
    }
    for name, run in runs.items():
        row[name] = {key: run[key] for key in SWEPT_FIELDS}
    row["trl"]["response_positions_all"] = runs["trl"]["response_positions_all"]
    row["fgrlhf"]["phase_cpu_seconds"] = phase_cpu(runs["fgrlhf"]["breakdown"])
    if "floor" in runs:
        row["floor"]["phase_cpu_seconds"] = runs["floor"]["phase_cpu_seconds"]
    fg, trl = row["fgrlhf"], row["trl"]
    row["ratio_step_time_fgrlhf_vs_trl"] = fg["step_seconds"] / trl["step_seconds"]
    row["ratio_cpu_seconds_fgrlhf_vs_trl"] = fg["cpu_seconds_per_step"] / trl["cpu_seconds_per_step"]
    row["ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl"] = (
        fg["cpu_seconds_per_generated_token"] / trl["cpu_seconds_per_generated_token"]
    )
    if "floor" in row:
        row["ratio_cpu_seconds_fgrlhf_vs_floor"] = fg["cpu_seconds_per_step"] / row["floor"]["cpu_seconds_per_step"]
    write_json(out, row)


def growth(rows: list[dict], measure) -> dict[str, float]:
    """Per framework, ``measure`` of its run at the longest and largest point over the shortest and smallest."""
    first = min(rows, key=lambda r: (r["max_new_tokens"], r["rollout_batch_size"]))
    last = max(rows, key=lambda r: (r["max_new_tokens"], r["rollout_batch_size"]))
    return {name: measure(last[name]) / measure(first[name]) for name in SWEPT if name in first}


def cpu_growth(rows: list[dict]) -> dict[str, float]:
    """How fast each framework's cost grows: CPU seconds per step, largest point over smallest."""
    return growth(rows, lambda run: run["cpu_seconds_per_step"])


def token_growth(rows: list[dict]) -> dict[str, float]:
    """How fast each framework's work grows: tokens generated per step (median), largest point over smallest."""
    return growth(rows, lambda run: statistics.median(run["generated_tokens_all"]))


def render_sweep(result: dict) -> str:
    s = result["settings"]
    names = [name for name in SWEPT if name in result["sweep"][0]]
    lines = [
        (
            f"PPO step cost by response length and rollout batch, {model_label(s['policy'])}, minibatch "
            f"{s['step_batch_size']}, {s['epochs']} epochs; median of {s['steps']} steps"
        ),
        "",
        "| new tokens | rollout batch | "
        + " | ".join(f"{n} wall s | {n} CPU s" for n in names)
        + " | CPU fgrlhf/TRL | wall fgrlhf/TRL |"
        + (" CPU fgrlhf/floor |" if "floor" in names else ""),
        "| ---: | ---: | "
        + " | ".join("---: | ---:" for _ in names)
        + " | ---: | ---: |"
        + (" ---: |" if "floor" in names else ""),
    ]
    for row in result["sweep"]:
        cells = " | ".join(f"{row[n]['step_seconds']:.2f} | {row[n]['cpu_seconds_per_step']:.2f}" for n in names)
        lines.append(
            f"| {row['max_new_tokens']} | {row['rollout_batch_size']} | {cells} | "
            f"{row['ratio_cpu_seconds_fgrlhf_vs_trl']:.2f} | {row['ratio_step_time_fgrlhf_vs_trl']:.2f} |"
            + (f" {row['ratio_cpu_seconds_fgrlhf_vs_floor']:.2f} |" if "floor" in names else "")
        )
    growths = {
        "CPU seconds per step": result["cpu_growth"],
        "tokens generated per step": result["token_growth"],
    }
    lines.append("")
    lines += [
        f"{what}, largest point over smallest: " + ", ".join(f"{name} {value:.2f}x" for name, value in by.items())
        for what, by in growths.items()
    ]
    kept = [row for row in result["sweep"] if row.get("kept_from_earlier_run")]
    if kept:  # each point's frameworks ran back to back; points of different runs did not
        dates = sorted(row["date"] for row in result["sweep"])
        lines.append(
            f"{len(kept)} of {len(result['sweep'])} points were kept from an earlier run of the same settings; "
            f"points measured from {dates[0]} to {dates[-1]} (see each point's date)."
        )
    median = statistics.median
    phased = [n for n in names if n != "trl"]  # the sides whose CPU is split by phase
    lines += [
        "",
        "Work and CPU per step (each framework samples its own responses; a token counts up to its response's EOS):",
        "",
        "| new tokens | rollout batch | tokens generated, "
        + " / ".join(names)
        + " | TRL response positions | CPU ms per token, "
        + " / ".join(names)
        + " | CPU per token fgrlhf/TRL | "
        + " | ".join(f"{n} CPU s: rollout / score / train / other" for n in phased)
        + " |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | " + " | ".join("---:" for _ in phased) + " |",
    ]
    for row in result["sweep"]:
        phases = {n: phase_groups(n, row[n]["phase_cpu_seconds"]) for n in phased}
        lines.append(
            f"| {row['max_new_tokens']} | {row['rollout_batch_size']} | "
            + " / ".join(f"{median(row[n]['generated_tokens_all']):.0f}" for n in names)
            + f" | {median(row['trl']['response_positions_all']):.0f} | "
            + " / ".join(f"{row[n]['cpu_seconds_per_generated_token'] * 1e3:.1f}" for n in names)
            + f" | {row['ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl']:.2f} | "
            + " | ".join(" / ".join(f"{value:.1f}" for value in phases[n].values()) for n in phases)
            + " |"
        )
    runs_in_order = list(result["sweep"][0]["machine"]["steal_seconds_during"])  # the same in every row
    lines += [
        "",
        "How fast the machine was between each point's runs (a fixed one-thread matmul probe, alone and in two "
        "processes at once, in the order the runs went; steal: CPU time the hypervisor gave to others):",
        "",
        "| new tokens | rollout batch | probe CPU s before "
        + " / ".join(runs_in_order)
        + " / after | probe spread | two at once, CPU each over alone | steal s during "
        + " / ".join(runs_in_order)
        + " |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in result["sweep"]:
        machine = row["machine"]
        lines.append(
            f"| {row['max_new_tokens']} | {row['rollout_batch_size']} | "
            + " / ".join(f"{mark['probe_cpu_seconds']:.3f}" for mark in machine["marks"])
            + f" | {machine['probe_cpu_spread']:.1%} | "
            + " / ".join(f"{slowdown:.2f}" for slowdown in machine["pair_slowdown"])
            + " | "
            + " / ".join(f"{seconds:.1f}" for seconds in machine["steal_seconds_during"].values())
            + " |"
        )
    return "\n".join(lines)


def plot_sweep(result: dict, path: Path) -> None:
    """CPU and wall seconds per step against response length (a line per rollout batch) and against rollout
    batch (a line per length), so a sweep along either axis alone still draws its growth."""
    plt = pyplot()
    rows = result["sweep"]
    names = [name for name in SWEPT if name in rows[0]]
    styles = dict(zip(SWEPT, ("-", "--", ":"), strict=True))
    axes = (  # key, axis label, legend name
        ("max_new_tokens", "response length (new tokens)", "response length"),
        ("rollout_batch_size", "rollout batch", "rollout batch"),
    )
    fig, panels = plt.subplots(2, 2, figsize=(10, 8), squeeze=False)
    measures = (("cpu_seconds_per_step", "CPU"), ("step_seconds", "wall"))
    for row_panels, (key, label) in zip(panels, measures, strict=True):
        for panel, (x, x_label, _), (line, _, line_name) in zip(row_panels, axes, reversed(axes), strict=True):
            for i, fixed in enumerate(sorted({r[line] for r in rows})):
                points = sorted((r for r in rows if r[line] == fixed), key=lambda r: r[x])
                for name in names:
                    panel.plot(
                        [r[x] for r in points],
                        [r[name][key] for r in points],
                        styles[name],
                        marker="o",
                        color=f"C{i}",
                        label=f"{name}, {line_name} {fixed}",
                    )
            panel.set_xlabel(x_label)
            panel.set_ylabel(f"{label} seconds per PPO step (median)")
            panel.legend(fontsize=6)
    fig.suptitle(f"PPO step cost, {model_label(result['settings']['policy'])}", fontsize=10)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.quick:
        args.warmup = 1
    if args.warmup < 1:
        parser.error("--warmup must be at least 1: a step is timed from the end of the one before")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if args.sweep:
            publish(args, run_sweep(args, workdir), plot_sweep, render_sweep)
            return 0
        cfgs = [load_cfg(args, workdir, ranks) for ranks in args.learner_ranks or [None]]  # all checked first
        cfg = cfgs[0]
        watch = machine_speed.MachineWatch()
        watch.mark("trl")
        trl_result = run_trl_apart(cfg, workdir, args.warmup, args.trl_threads)  # first: fails fast without trl
        if cfg.reward.model == str(workdir / SMOLLM2_RM):
            save_token_rm(cfg, workdir / SMOLLM2_RM)
        layouts = [] if args.no_floor else list(dict.fromkeys(args.floor_layouts))
        floors = {}
        for layout in layouts:
            watch.mark(f"floor_{layout}")
            floors[layout] = run_floor(cfg, workdir, args.warmup, args.trl_threads, layout)
        watch.mark("fgrlhf")
        fg_result = run_fgrlhf(with_rollout_mode(cfg, False), workdir, args.warmup, args.cpus)
        async_result = None
        if not args.no_async:
            watch.mark("fgrlhf_async")
            async_result = run_fgrlhf(with_rollout_mode(cfg, True), workdir, args.warmup, args.cpus)
        by_ranks = {cfg.policy_learner.world_size: fg_result}
        for other in cfgs[1:]:
            watch.mark(f"fgrlhf_{other.policy_learner.world_size}_ranks")
            by_ranks[other.policy_learner.world_size] = run_fgrlhf(
                with_rollout_mode(other, False), workdir, args.warmup, args.cpus
            )
        watch.mark("end")
    result = {
        "benchmark": "throughput",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {
            "config": str(args.config),
            "overrides": args.overrides,
            "cpus": args.cpus,
            "trl_threads": args.trl_threads,
            "learner_ranks": cfg.policy_learner.world_size,
            "warmup": args.warmup,
            "steps": cfg.steps - args.warmup - 1,
            "rollout_batch_size": cfg.ppo.rollout_batch_size,
            "step_batch_size": cfg.ppo.step_batch_size,
            "micro_batch_size": cfg.policy_learner.micro_batch_size,
            "epochs": cfg.ppo.epochs,
            "max_new_tokens": cfg.rollout.max_new_tokens,
            "reward_mode": cfg.ppo.reward_mode,
            "policy": cfg.policy.name,
            "model": args.model,
        },
        "fgrlhf": fg_result,
        "trl": trl_result,
        "fgrlhf_step_seconds": fg_result["step_seconds"],
        "trl_step_seconds": trl_result["step_seconds"],
        "ratio_step_time_fgrlhf_vs_trl": fg_result["step_seconds"] / trl_result["step_seconds"],
        "ratio_cpu_seconds_fgrlhf_vs_trl": fg_result["cpu_seconds_per_step"] / trl_result["cpu_seconds_per_step"],
        "ratio_cpu_seconds_per_generated_token_fgrlhf_vs_trl": fg_result["cpu_seconds_per_generated_token"]
        / trl_result["cpu_seconds_per_generated_token"],
        "ray_overhead_fraction": fg_result["ray_overhead_fraction"],
        "weight_push_mb_per_s": fg_result["weight_push_mb_per_s"],
        "breakdown": fg_result["breakdown"],
        "machine": watch.summary(),
    }
    if len(by_ranks) > 1:
        result["fgrlhf_by_learner_ranks"] = {
            str(ranks): {
                "step_seconds": run["step_seconds"],
                "cpu_seconds_per_step": run["cpu_seconds_per_step"],
                "train_phase_seconds": run["phase_seconds"]["train"],
                "train_actor_cpu_seconds": run["breakdown"]["phases"]["train"]["actor_cpu_s"],
                "ray_processes_cpu_seconds": run["breakdown"]["ray_processes_cpu_s"],
                "step_seconds_all": run["step_seconds_all"],
            }
            for ranks, run in by_ranks.items()
        }
    for i, (layout, floor_result) in enumerate(floors.items()):
        suffix = f"_{layout}" if i else ""  # the first layout is the floor of the unsuffixed keys
        result |= {
            f"floor{suffix}": floor_result,
            f"floor{suffix}_step_seconds": floor_result["step_seconds"],
            f"ratio_cpu_seconds_fgrlhf_vs_floor{suffix}": fg_result["cpu_seconds_per_step"]
            / floor_result["cpu_seconds_per_step"],
            f"ratio_cpu_seconds_trl_vs_floor{suffix}": trl_result["cpu_seconds_per_step"]
            / floor_result["cpu_seconds_per_step"],
        }
    if async_result is not None:
        result |= {
            "fgrlhf_async": async_result,
            "fgrlhf_async_step_seconds": async_result["step_seconds"],
            "ratio_step_time_async_vs_sync": async_result["step_seconds"] / fg_result["step_seconds"],
            "ratio_cpu_seconds_async_vs_sync": async_result["cpu_seconds_per_step"] / fg_result["cpu_seconds_per_step"],
        }
    publish(args, result, plot, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
