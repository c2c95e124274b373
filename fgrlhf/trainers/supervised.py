"""Supervised training on Ray + DeepSpeed for any per-example loss: reward models, FIGA, SFT.

The loop knows nothing about the loss. A *task* supplies it: a small picklable object (it is shipped to
every rank) that implements :class:`SupervisedTask`:

``prepare(records) -> list``
    Called once, on the driver, before any actor starts: validate and encode raw records into picklable
    examples (token ids, masks). Bad input fails here with a message naming the record.
``build_model() -> torch.nn.Module``
    Called on every rank after ``torch.manual_seed(cfg.seed)``, so every rank builds the same weights.
``collate(examples) -> dict[str, Tensor]``
    One micro-batch of examples into tensors (the worker moves them to its device).
``loss(model, batch) -> (loss, metrics)``
    ``model`` is the DeepSpeed engine (call it like the module). ``loss`` is the *mean* over the
    micro-batch's examples and ``metrics`` maps names to per-example means (floats), so that averages
    weighted by example counts are exact over ranks, micro-batches and eval sets.
``save_pretrained(model, directory)``
    Write the HF-style export of ``model`` (the bare module, with whole parameters even under ZeRO-3);
    called on rank 0 only.
``evaluate(model, batch) -> metrics`` (optional)
    Eval-time metrics of one micro-batch (per-example means); without it eval reports ``loss``'s
    metrics under ``torch.no_grad``.

Batches: a step consumes one *global batch* of ``micro_batch_size x gradient_accumulation_steps x
world_size`` examples, in an order fixed by ``seed`` and the epoch. Rank r takes the r-th contiguous slice
and splits it into ``gradient_accumulation_steps`` micro-batches; since every loss is a per-example mean
over equal-sized micro-batches, the averaged gradient is the global batch's mean whatever the world size
(1 rank x 4 accumulation steps == 2 ranks x 2 == 4 ranks x 1). A trailing partial global batch of an epoch
is dropped for the same reason.

Outputs in the run directory (:mod:`fgrlhf.runtime.run_dir`, which also decides whether ``--out`` may be used):
``metrics.jsonl`` (one JSON object per step: step, epoch, loss, lr, examples_per_s, the task's metrics,
``eval_*`` on eval steps and, on GPU ranks, ``gpu/learnerR/*``: :mod:`fgrlhf.runtime.device_stats`), ``tb/``
(TensorBoard), ``checkpoints/step_N/`` (DeepSpeed engine states of all ranks under tag ``ds``, with each
rank's torch RNG, plus ``trainer_state.json`` written last: a checkpoint without it is incomplete and ignored
on resume) and ``final/`` (``task.save_pretrained``). A resumed run
restarts from the newest complete checkpoint at the same step and data order; the metric lines after it are
dropped and redone. DeepSpeed writes each rank's shards itself, so a multi-node run needs the run directory
on a shared file system.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from pydantic import Field

from fgrlhf.config import ConfigError, DeepSpeedConfig, StrictModel
from fgrlhf.runtime.actor_group import ActorGroup
from fgrlhf.runtime.run_dir import RunDir

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"


@runtime_checkable
class SupervisedTask(Protocol):
    """What :func:`run_supervised_training` needs from a loss; see the module docstring for the contract."""

    def prepare(self, records: list[dict]) -> list[Any]: ...

    def build_model(self) -> torch.nn.Module: ...

    def collate(self, examples: list[Any]) -> dict[str, torch.Tensor]: ...

    def loss(self, model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]: ...

    def save_pretrained(self, model: torch.nn.Module, directory: str) -> None: ...


class SupervisedConfig(StrictModel):
    """The loop's settings; a command's config (RM, FIGA) subclasses it and adds its task's fields."""

    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    eval_every: int = Field(0, ge=0, description="steps between evals (0: only after the last step)")
    save_every: int = Field(0, ge=0, description="steps between checkpoints (0: only the final export)")
    keep_checkpoints: int = Field(2, ge=1, description="newest checkpoints kept on disk")
    seed: int = 0


# What --resume may change (fgrlhf.runtime.run_dir): run length, eval/checkpoint cadence and resources. Every other key
# (seed, model, data, loss, batch sizes, learning rate, ...) changes what the run computes.
SUPERVISED_CHANGEABLE = (
    "epochs",
    "max_steps",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "deepspeed.num_cpus_per_rank",
    "deepspeed.num_gpus_per_rank",
    "deepspeed.backend",
    "deepspeed.timeout_s",
)
SUPERVISED_EXTENDS = ("epochs", "max_steps")  # a finished run continues when these change


# --- data order -------------------------------------------------------------------------------------------
def epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    """The example order of ``epoch``: a pure function of (seed, epoch), so resume needs only the step."""
    order = list(range(num_examples))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


def global_batch(num_examples: int, global_size: int, seed: int, step: int) -> tuple[int, list[int]]:
    """(epoch, example indices) of 0-based optimizer step ``step``."""
    per_epoch = num_examples // global_size
    epoch, index = divmod(step, per_epoch)
    return epoch, epoch_order(num_examples, seed, epoch)[index * global_size : (index + 1) * global_size]


def shard_for_ranks(batch: list[Any], world_size: int, micro_batch_size: int) -> list[list[list[Any]]]:
    """Per rank, its micro-batches: rank r's contiguous slice cut into micro-batches, in order."""
    per_rank = len(batch) // world_size
    if per_rank * world_size != len(batch) or per_rank % micro_batch_size:
        raise ValueError(f"a batch of {len(batch)} does not split into {world_size} ranks x micro {micro_batch_size}")
    shards = [batch[r * per_rank : (r + 1) * per_rank] for r in range(world_size)]
    return [[s[i : i + micro_batch_size] for i in range(0, per_rank, micro_batch_size)] for s in shards]


def eval_assignment(num_examples: int, world_size: int, micro_batch_size: int) -> list[list[tuple[slice, float]]]:
    """Per rank, (example slice, weight) micro-batches; every rank gets the same count because ZeRO-3
    forwards are collective, so ranks short of work re-run a micro-batch with weight 0."""
    chunks = [slice(i, min(i + micro_batch_size, num_examples)) for i in range(0, num_examples, micro_batch_size)]
    rounds = math.ceil(len(chunks) / world_size)
    plan: list[list[tuple[slice, float]]] = [[] for _ in range(world_size)]
    for position in range(rounds * world_size):
        rank = position % world_size
        plan[rank].append((chunks[position], 1.0) if position < len(chunks) else (chunks[0], 0.0))
    return plan


def weighted_mean(parts: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    """Average per-example-mean metric dicts by their example counts."""
    total = sum(count for _, count in parts)
    keys = {key for metrics, count in parts if count for key in metrics}
    return {key: sum(m.get(key, 0.0) * c for m, c in parts) / total for key in sorted(keys)} if total else {}


def _tag(key: str) -> str:
    if key.startswith("gpu/"):
        return key
    return f"{'eval' if key.startswith('eval_') else 'train'}/{key.removeprefix('eval_')}"


def _scalars(record: dict[str, Any]) -> dict[str, float]:
    """TensorBoard tags: ``train/KEY``, ``eval/KEY`` (for ``eval_KEY``) and the ``gpu/`` keys unchanged."""
    return {_tag(k): v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}


# --- the loop ---------------------------------------------------------------------------------------------
@contextmanager
def _ranks(task: SupervisedTask, ds: DeepSpeedConfig, seed: int, total_steps: int) -> Iterator[ActorGroup]:
    """The DeepSpeed ranks as Ray actors in a placement group of their own, set up; freed on exit (a caller
    sharing the Ray session must not inherit the bundles)."""
    import ray
    from ray.util.placement_group import remove_placement_group

    from fgrlhf.runtime.distributed import placement_group_for
    from fgrlhf.runtime.placement import supervised_placement
    from fgrlhf.workers.train_worker import SupervisedTrainWorker

    plan = supervised_placement(ds)  # the same plan `fgrlhf plan` prints
    group = placement_group_for(plan.bundles, plan.strategy)
    try:
        ranks = ActorGroup.create(
            SupervisedTrainWorker, group, plan.slots, lambda slot: (task, slot.index, ds.world_size, ds, seed)
        )
        try:
            ray.get(ranks.rendezvous(total_steps))
            yield ranks
        finally:
            ranks.shutdown()
    finally:
        remove_placement_group(group)


def _evaluate(ranks: ActorGroup, examples: list[Any], ds: DeepSpeedConfig) -> dict[str, float]:
    plan = eval_assignment(len(examples), ds.world_size, ds.micro_batch_size)
    args = [([(examples[s], w) for s, w in rank_plan],) for rank_plan in plan]
    parts = [part for rank_parts in ranks.each("evaluate", args) for part in rank_parts]
    return {f"eval_{k}": v for k, v in weighted_mean(parts).items()}


def run_supervised_training(
    task: SupervisedTask,
    train_records: list[dict],
    eval_records: list[dict],
    cfg: SupervisedConfig,
    run: RunDir,
) -> dict[str, Any]:
    """Train ``task`` into ``run`` (opened with :func:`fgrlhf.runtime.run_dir.open_run`; ``ray.init`` must have run);
    returns the last step's metrics + ``final_dir``. The caller marks the run finished."""
    from tqdm import tqdm

    from fgrlhf.runtime.device_stats import step_gpu_metrics

    ds = cfg.deepspeed
    train = task.prepare(train_records)
    evals = task.prepare(eval_records) if eval_records else []
    size = ds.global_batch_size
    if len(train) < size:
        raise ConfigError(
            f"{len(train)} training examples cannot fill one global batch of {size} "
            f"(micro_batch_size x gradient_accumulation_steps x world_size); lower them"
        )
    per_epoch = len(train) // size
    total = cfg.max_steps or cfg.epochs * per_epoch

    start, checkpoint = 0, run.resume_checkpoint()
    if checkpoint is not None:
        state = checkpoint.state
        if state["world_size"] != ds.world_size or state["global_batch_size"] != size:
            raise ConfigError(
                f"{checkpoint.path} was written with world_size={state['world_size']}, global batch "
                f"{state['global_batch_size']}; resume needs the same"
            )
        start = checkpoint.step
    elif run.mode == "resume":
        log.warning("--resume: no complete checkpoint in %s; starting from step 0", run.path / "checkpoints")
    run.start()  # after the data and the checks above: a refused start loses nothing
    log.info(
        "DeepSpeed ZeRO stage %d, %d rank(s), global batch %d = micro %d x accumulation %d x ranks %d; "
        "%d examples (%d eval), %d steps/epoch, %d steps",
        ds.zero_stage,
        ds.world_size,
        size,
        ds.micro_batch_size,
        ds.gradient_accumulation_steps,
        ds.world_size,
        len(train),
        len(evals),
        per_epoch,
        total,
    )
    if len(train) % size:
        log.info(
            "each epoch drops its last %d examples (a partial global batch would change the gradient scale)",
            len(train) % size,
        )

    with _ranks(task, ds, cfg.seed, total) as ranks:
        # ranks with a GPU report its memory and utilisation each step (role "learner", as `fgrlhf plan` names them)
        gpu_ranks = {("learner", rank): actor for rank, actor in enumerate(ranks)} if ds.num_gpus_per_rank > 0 else {}
        metrics_log = run.metrics(start)
        record: dict[str, Any] = {}
        try:
            if checkpoint is not None:
                ranks.all("load_checkpoint", str(checkpoint.path))
                log.info("resumed from %s at step %d", checkpoint.path, start)
            bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)
            for step in range(start, total):
                began = time.perf_counter()
                epoch, indices = global_batch(len(train), size, cfg.seed, step)
                shards = shard_for_ranks([train[i] for i in indices], ds.world_size, ds.micro_batch_size)
                results = ranks.each("train_step", [(shard,) for shard in shards])
                done = step + 1
                record = {
                    "step": done,
                    "epoch": epoch,
                    **weighted_mean(results),
                    "examples_per_s": size / (time.perf_counter() - began),
                }
                if evals and ((cfg.eval_every and done % cfg.eval_every == 0) or done == total):
                    record.update(_evaluate(ranks, evals, ds))
                record.update(step_gpu_metrics(gpu_ranks))  # {} and no Ray call on CPU ranks
                metrics_log.write(record, _scalars(record))
                bar.update(1)
                bar.set_postfix(
                    {k: f"{v:.4g}" for k, v in record.items() if k in ("loss", "eval_loss", "eval_accuracy")}
                )
                if cfg.save_every and done % cfg.save_every == 0 and done < total:
                    _save_checkpoint(ranks, run, done, epoch, cfg)
            bar.close()
            with run.staging_final() as staging:  # a crash mid-export never leaves a half-written final/
                ranks.all("export", str(staging))
        finally:
            metrics_log.close()
    log.info("final model in %s", run.final)
    return {**record, "final_dir": str(run.final)}


def _save_checkpoint(ranks: ActorGroup, run: RunDir, step: int, epoch: int, cfg: SupervisedConfig) -> None:
    path = run.checkpoint_dir(step)
    with run.space_guard(path, "checkpoint"):  # a full disk: one line and run.json "failed", not a Ray traceback
        ranks.all("save_checkpoint", str(path))
    state = {
        "step": step,
        "epoch": epoch,
        "seed": cfg.seed,
        "world_size": cfg.deepspeed.world_size,
        "global_batch_size": cfg.deepspeed.global_batch_size,
    }
    run.commit_checkpoint(path, state, cfg.keep_checkpoints)
