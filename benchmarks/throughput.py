"""PPO step time of fgrlhf vs TRL's PPO trainer on the same tiny model, batch, generation length and CPU.

  python benchmarks/throughput.py [--quick] [--steps 5] [--warmup 1] [--cpus 2] [--trl-threads 1]
                                  [--json OUT] [--plot OUT.png]
                                  [key=value ...]   # PPOTrainConfig overrides of configs/ppo-tiny-cpu.yaml

Both frameworks get the settings of one ``PPOTrainConfig``: its policy (random tiny Llama, same seed), its
prompts (same token ids), rollout batch, minibatch, micro-batch, PPO epochs, response length, sampling
temperature, KL coefficient, clip ranges and learning rate. fgrlhf runs as ``fgrlhf ppo`` does (Ray actors:
DeepSpeed policy/critic learners, rollout, reward, reference) in a local Ray instance of ``--cpus`` CPUs;
TRL (``trl.experimental.ppo``, trl==1.12.0, the last release with PPO) runs in this process with
``--trl-threads`` torch threads (default 1, like each fgrlhf actor: on a shared, oversubscribed CPU more
OpenMP threads slow it down) and random tiny-Llama sequence-classification reward and value models. Differences
that remain: TRL trains policy and value in one backward pass and steps its optimizer once per
``gradient_accumulation_steps`` micro-batches; it cannot whiten rewards below a minibatch of 8.

Reported (medians over ``--steps`` steps after ``--warmup``; one more step runs last and is not timed):
- seconds per PPO step of each framework and ``ratio_step_time_fgrlhf_vs_trl`` (> 1: fgrlhf is slower);
- ``ray_overhead_fraction``: the part of fgrlhf's step wall time (driver) during which no actor method was
  executing and the driver was not computing advantages — scheduling, (de)serialisation, object transfer
  and ``ray.get`` latency. Actor execution intervals come from Ray's task events (``ray.timeline()``; they
  include the actor's own argument deserialisation and result storing); their union inside a step is the
  actor time on the critical path (phases are barriers);
- ``weight_push_mb_per_s``: bytes of the policy's weights pushed to the rollout actor / seconds of the
  driver's ``weight_push`` phase (``_actor`` variant: / the sender's ``push_weights`` execution time);
- CPU-seconds per step (user + system, psutil): for fgrlhf the driver and every process below it (Ray's
  GCS, raylet and all actors), for TRL its process. On a shared machine wall time swings with the other
  users' load; CPU time much less, so ``ratio_cpu_seconds_fgrlhf_vs_trl`` is the steadier comparison.

Without ``trl`` importable the script stops with an error; it never reports a TRL number it did not measure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import publish, pyplot, ray_session, save_figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "ppo-tiny-cpu.yaml"
log = logging.getLogger("benchmarks.throughput")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=CONFIG, help="PPO config both frameworks follow")
    parser.add_argument("--quick", action="store_true",
                        help="no warm-up, 1 measured step, 8 new tokens, 1 learner rank each (CI smoke run)")
    parser.add_argument("--steps", type=int, default=5, help="measured PPO steps per framework")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not measured")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of fgrlhf's local Ray instance")
    parser.add_argument("--trl-threads", type=int, default=1,
                        help="torch threads of the TRL process (fgrlhf's actors use 1 thread each)")
    parser.add_argument("--workdir", type=Path, help="run directories (default: a temporary directory)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="write the results as JSON")
    parser.add_argument("--plot", metavar="OUT.png", type=Path, help="bar chart of the step times")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="PPOTrainConfig overrides")


def load_cfg(args: argparse.Namespace):
    from fgrlhf.config import load_config
    from fgrlhf.ppo_trainer import PPOTrainConfig

    steps = 1 if args.quick else args.steps
    extra = ["rollout.max_new_tokens=8", "policy_learner.world_size=1", "critic_learner.world_size=1"] if args.quick else []
    # One trailing step is run and not timed: Ray flushes task events about once a second, so the events of
    # the very last step can die with the actors at shutdown. Checkpoints are not part of a step (the final
    # one is saved after the last step).
    return load_config(PPOTrainConfig, args.config, [*extra, *args.overrides,
                                                      f"steps={args.warmup + steps + 1}", "save_every=0"])


def measured(values: list, warmup: int, total: int) -> list:
    """The timed steps: after the warm-up, before the trailing step."""
    return values[warmup:total - 1]


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


def tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process and all its descendants alive now (Ray's local processes)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # exited between listing and reading
            continue
        total += times.user + times.system
    return total


def run_fgrlhf(cfg, workdir: Path, warmup: int, cpus: int) -> dict:
    import ray
    import torch

    from fgrlhf.ppo_trainer import PPO_RUN, PPOTrainer
    from fgrlhf.run_dir import open_run

    class TimedTrainer(PPOTrainer):
        """Records each step's wall-clock window (epoch seconds, the clock of Ray's task events) and CPU time."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.windows: list[tuple[float, float]] = []
            self.cpu: list[float] = []

        def _step(self, *args):
            start, cpu = time.time(), tree_cpu_seconds()
            record = super()._step(*args)
            self.cpu.append(tree_cpu_seconds() - cpu)
            self.windows.append((start, time.time()))
            return record

    with ray_session(cpus):
        # Every measurement is a fresh run: a previous one in --workdir is replaced.
        trainer = TimedTrainer(cfg, open_run(workdir / "fgrlhf", PPO_RUN, cfg, overwrite=True))
        trainer.run()
        events = ray.timeline()
    records = [json.loads(line) for line in (workdir / "fgrlhf" / "metrics.jsonl").read_text().splitlines()]
    intervals = actor_intervals(events)
    rows = []
    for record, (lo, hi), cpu in measured(list(zip(records, trainer.windows, trainer.cpu)), warmup, cfg.steps):
        inside = [(a, b) for name, a, b in intervals if a < hi and b > lo]
        started = {name for name, a, _ in intervals if lo <= a < hi}
        missing = {"RolloutWorker.generate", "LearnerWorker.train", "LearnerWorker.push_weights"} - started
        if missing:
            raise RuntimeError(f"Ray's task events miss {sorted(missing)} in step {record['step']}: "
                               "cannot time the actors")
        pushes = [b - a for name, a, b in intervals if name == "LearnerWorker.push_weights" and lo <= a < hi]
        wall = hi - lo
        actor = union_seconds(inside, lo, hi)
        driver = record["phase_seconds"]["advantages"] + record["phase_seconds"].get("gold", 0.0)
        rows.append({"step": record["step"], "wall_s": wall, "cpu_s": cpu, "actor_critical_path_s": actor,
                     "driver_compute_s": driver, "phase_seconds": record["phase_seconds"],
                     "push_actor_s": max(pushes)})
    push_bytes = sum(torch.Size(shape).numel() * getattr(torch, dtype).itemsize
                     for _, shape, dtype in trainer.cluster.layout)
    median = statistics.median
    wall = median(r["wall_s"] for r in rows)
    phases = {name: median(r["phase_seconds"][name] for r in rows) for name in rows[0]["phase_seconds"]}
    return {
        "step_seconds": wall,
        "step_seconds_all": [r["wall_s"] for r in rows],
        "cpu_seconds_per_step": median(r["cpu_s"] for r in rows),
        "phase_seconds": phases,
        "ray_overhead_fraction": median((r["wall_s"] - r["actor_critical_path_s"] - r["driver_compute_s"]) / r["wall_s"]
                                        for r in rows),
        "non_actor_fraction": median((r["wall_s"] - r["actor_critical_path_s"]) / r["wall_s"] for r in rows),
        "weight_push_bytes": push_bytes,
        "weight_push_mb_per_s": push_bytes / 1e6 / phases["weight_push"],
        "weight_push_actor_mb_per_s": push_bytes / 1e6 / median(r["push_actor_s"] for r in rows),
        "steps": rows,
    }


# --- TRL --------------------------------------------------------------------------------------------------
def run_trl(cfg, workdir: Path, warmup: int, threads: int) -> dict:
    try:
        import trl
        from trl.experimental.ppo import PPOConfig, PPOTrainer
    except ImportError as exc:
        raise SystemExit(f"error: TRL's PPO trainer is not importable ({exc}); "
                         "install it with: pip install 'fgrlhf[bench]' (trl==1.12.0)") from None
    import torch
    from datasets import Dataset
    from transformers import LlamaForSequenceClassification, TrainerCallback

    from fgrlhf.models import load_causal_lm, load_tokenizer, tiny_llama_config
    from fgrlhf.ppo_trainer import load_prompt_ids

    ppo, ds = cfg.ppo, cfg.policy_learner
    tokenizer = load_tokenizer(cfg.policy.name)
    tokenizer.padding_side = "left"  # TRL generates from the collated (left-padded) queries
    policy, ref = load_causal_lm(cfg.policy, tokenizer), load_causal_lm(cfg.policy, tokenizer)

    def scalar_model(seed: int):
        config = tiny_llama_config(cfg.policy, tokenizer)
        config.num_labels = 1
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return LlamaForSequenceClassification(config)

    _, prompt_ids = load_prompt_ids(cfg)
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    minibatch_per_rank = ppo.step_batch_size // ds.world_size
    config = PPOConfig(
        output_dir=str(workdir / "trl"), report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
        bf16=False, seed=cfg.seed, learning_rate=ds.lr, total_episodes=cfg.steps * ppo.rollout_batch_size,
        per_device_train_batch_size=ds.micro_batch_size,
        gradient_accumulation_steps=ppo.rollout_batch_size // ds.micro_batch_size,
        num_mini_batches=ppo.rollout_batch_size // ppo.step_batch_size, num_ppo_epochs=ppo.epochs,
        response_length=cfg.rollout.max_new_tokens, temperature=cfg.rollout.temperature, stop_token="eos",
        kl_coef=ppo.kl_coef, kl_estimator=ppo.kl_estimator if ppo.kl_estimator in ("k1", "k3") else "k1",
        cliprange=ppo.clip_eps, cliprange_value=ppo.value_clip_eps, vf_coef=ppo.vf_coef, gamma=ppo.gamma,
        lam=ppo.lam, whiten_rewards=ppo.whiten_rewards and minibatch_per_rank >= 8,
        num_sample_generations=0, local_rollout_forward_batch_size=ppo.rollout_batch_size)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.marks: list[float] = []
            self.cpu: list[float] = []

        def on_train_begin(self, *args, **kwargs):
            self.marks, self.cpu = [time.perf_counter()], [time.process_time()]

        def on_step_end(self, *args, **kwargs):
            self.marks.append(time.perf_counter())
            self.cpu.append(time.process_time())

    timer = StepTimes()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref,
                             reward_model=scalar_model(cfg.seed + 1), value_model=scalar_model(cfg.seed + 2),
                             train_dataset=dataset, eval_dataset=dataset.select(range(2)), callbacks=[timer])
        with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs and samples; stdout is the table
            trainer.train()
    finally:
        torch.set_num_threads(before)
    if len(timer.marks) != cfg.steps + 1:
        raise RuntimeError(f"TRL ran {len(timer.marks) - 1} steps, expected {cfg.steps}")
    steps = measured([b - a for a, b in zip(timer.marks, timer.marks[1:])], warmup, cfg.steps)
    cpu = measured([b - a for a, b in zip(timer.cpu, timer.cpu[1:])], warmup, cfg.steps)
    return {"version": trl.__version__, "step_seconds": statistics.median(steps), "step_seconds_all": steps,
            "cpu_seconds_per_step": statistics.median(cpu),
            "whiten_rewards": config.whiten_rewards, "torch_threads": threads}


# --- report -----------------------------------------------------------------------------------------------
def render(result: dict) -> str:
    f, t = result["fgrlhf"], result["trl"]
    s = result["settings"]
    lines = [
        (f"PPO step time, tiny Llama, rollout batch {s['rollout_batch_size']}, minibatch {s['step_batch_size']}, "
         f"{s['epochs']} epochs, {s['max_new_tokens']} new tokens; fgrlhf: {s['cpus']} Ray CPUs, "
         f"{s['learner_ranks']} DeepSpeed rank(s) per learner; TRL: {s['trl_threads']} torch thread(s); "
         f"median of {s['steps']} steps"),
        "",
        "| framework | wall s / PPO step (median) | CPU s / PPO step (median) | steps measured |",
        "| --- | ---: | ---: | ---: |",
        (f"| fgrlhf (Ray + DeepSpeed) | {f['step_seconds']:.2f} | {f['cpu_seconds_per_step']:.2f} | "
         f"{len(f['step_seconds_all'])} |"),
        (f"| TRL {t['version']} PPOTrainer | {t['step_seconds']:.2f} | {t['cpu_seconds_per_step']:.2f} | "
         f"{len(t['step_seconds_all'])} |"),
        "",
        "| metric | value |",
        "| --- | ---: |",
        f"| ratio_step_time_fgrlhf_vs_trl | {result['ratio_step_time_fgrlhf_vs_trl']:.2f} |",
        f"| ratio_cpu_seconds_fgrlhf_vs_trl | {result['ratio_cpu_seconds_fgrlhf_vs_trl']:.2f} |",
        f"| ray_overhead_fraction | {f['ray_overhead_fraction']:.3f} |",
        f"| non-actor fraction (incl. driver advantages) | {f['non_actor_fraction']:.3f} |",
        f"| weight_push_mb_per_s (driver phase) | {f['weight_push_mb_per_s']:.1f} |",
        f"| weight push MB/s (sender execution) | {f['weight_push_actor_mb_per_s']:.1f} |",
        f"| weight push size (MB) | {f['weight_push_bytes'] / 1e6:.1f} |",
        "",
        "| fgrlhf phase | s (median) |",
        "| --- | ---: |",
        *[f"| {name} | {seconds:.3f} |" for name, seconds in f["phase_seconds"].items()],
    ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plt = pyplot()

    f, t = result["fgrlhf"], result["trl"]
    trl_label = f"TRL {t['version']}"
    fig, (wall, cpu) = plt.subplots(1, 2, figsize=(9, 3.5))
    bottom = 0.0
    for name, seconds in f["phase_seconds"].items():  # fgrlhf: stacked phases, the rest is the loop itself
        wall.bar("fgrlhf", seconds, bottom=bottom, label=name)
        bottom += seconds
    wall.bar("fgrlhf", max(f["step_seconds"] - bottom, 0.0), bottom=bottom, label="other", color="lightgrey")
    wall.bar(trl_label, t["step_seconds"], color="tab:grey")
    wall.set_ylabel("wall seconds per PPO step (median)")
    wall.legend(fontsize=7, loc="upper right")
    cpu.bar(["fgrlhf", trl_label], [f["cpu_seconds_per_step"], t["cpu_seconds_per_step"]],
            color=["tab:blue", "tab:grey"])
    cpu.set_ylabel("CPU seconds per PPO step (median)")
    fig.suptitle(f"PPO step, tiny Llama ({result['settings']['cpus']} Ray CPUs / "
                 f"{result['settings']['trl_threads']} TRL thread)", fontsize=10)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    if args.quick:
        args.warmup = 0
    cfg = load_cfg(args)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        trl_result = run_trl(cfg, workdir, args.warmup, args.trl_threads)  # first: fails fast without trl
        fg_result = run_fgrlhf(cfg, workdir, args.warmup, args.cpus)
    result = {
        "benchmark": "throughput",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "settings": {"config": str(args.config), "overrides": args.overrides, "cpus": args.cpus,
                     "trl_threads": args.trl_threads, "learner_ranks": cfg.policy_learner.world_size,
                     "warmup": args.warmup, "steps": cfg.steps - args.warmup - 1,
                     "rollout_batch_size": cfg.ppo.rollout_batch_size, "step_batch_size": cfg.ppo.step_batch_size,
                     "micro_batch_size": cfg.policy_learner.micro_batch_size, "epochs": cfg.ppo.epochs,
                     "max_new_tokens": cfg.rollout.max_new_tokens, "reward_mode": cfg.ppo.reward_mode,
                     "policy": cfg.policy.name},
        "fgrlhf": fg_result,
        "trl": trl_result,
        "fgrlhf_step_seconds": fg_result["step_seconds"],
        "trl_step_seconds": trl_result["step_seconds"],
        "ratio_step_time_fgrlhf_vs_trl": fg_result["step_seconds"] / trl_result["step_seconds"],
        "ratio_cpu_seconds_fgrlhf_vs_trl": fg_result["cpu_seconds_per_step"] / trl_result["cpu_seconds_per_step"],
        "ray_overhead_fraction": fg_result["ray_overhead_fraction"],
        "weight_push_mb_per_s": fg_result["weight_push_mb_per_s"],
    }
    publish(args, result, plot, render)
    return 0


if __name__ == "__main__":
    sys.exit(main())
