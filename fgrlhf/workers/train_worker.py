"""One DeepSpeed data-parallel rank of :mod:`fgrlhf.trainers.supervised` (RM, FIGA, SFT) as a Ray actor.

The task (see ``SupervisedTask`` there) supplies the model, collation and loss; this actor only moves
micro-batches through the engine, checkpoints it and exports it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch

from fgrlhf.config import DeepSpeedConfig

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine


class SupervisedTrainWorker:
    engine: DeepSpeedEngine  # built by setup(), the first call after rendezvous_address

    def __init__(self, task: Any, rank: int, world_size: int, ds_cfg: DeepSpeedConfig, seed: int):
        from fgrlhf.runtime.distributed import bind_device

        torch.set_num_threads(1)
        bind_device()  # before anything asks CUDA: a CPU rank must not see the host's GPUs
        self.task, self.rank, self.world_size, self.ds_cfg, self.seed = task, rank, world_size, ds_cfg, seed

    def rendezvous_address(self) -> tuple[str, int]:
        from fgrlhf.runtime.distributed import free_port, node_address

        return node_address(), free_port()

    def setup(self, master_addr: str, master_port: int, total_steps: int) -> None:
        """Join the process group and build the engine (all ranks concurrently)."""
        from fgrlhf.runtime.distributed import build_engine, init_rank, zero3_init

        init_rank(self.rank, self.world_size, master_addr, master_port, self.ds_cfg.backend, self.ds_cfg.timeout_s)
        torch.manual_seed(self.seed)  # same initial weights (e.g. a fresh RM head) on every rank
        with zero3_init(self.ds_cfg):  # ZeRO-3: a checkpoint's causal LM loads partitioned, never whole
            model = self.task.build_model()
        self.engine, self.optimizer, _ = build_engine(model, self.ds_cfg, total_steps)
        self.device = self.engine.device

    def close(self) -> None:
        """Leave the process group before the actor goes (:meth:`fgrlhf.runtime.actor_group.ActorGroup.shutdown`)."""
        from fgrlhf.runtime.distributed import leave_group

        leave_group()

    def device_stats(self) -> dict[str, float]:
        """This actor's GPU memory and utilisation (:func:`fgrlhf.runtime.device_stats.device_stats`)."""
        from fgrlhf.runtime.device_stats import device_stats

        return device_stats()

    def _batch(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return {key: value.to(self.device) for key, value in self.task.collate(examples).items()}

    def train_step(self, micro_batches: list[list[Any]]) -> tuple[dict[str, float], int]:
        """One optimizer step over this rank's micro-batches; (per-example-mean metrics, example count)."""
        if len(micro_batches) != self.ds_cfg.gradient_accumulation_steps:
            raise ValueError(
                f"rank {self.rank}: {len(micro_batches)} micro-batches for "
                f"{self.ds_cfg.gradient_accumulation_steps} accumulation steps"
            )
        self.engine.train()
        sums: dict[str, float] = {}
        count = 0
        for examples in micro_batches:
            loss, metrics = self.task.loss(self.engine, self._batch(examples))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"rank {self.rank}: non-finite loss {value}")
            self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps
            self.engine.step()  # steps the optimizer only at the accumulation boundary
            for key, metric in {"loss": value, **metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(metric) * len(examples)
            count += len(examples)
        result = {key: total / count for key, total in sums.items()}
        result["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return result, count

    @torch.no_grad()
    def evaluate(self, micro_batches: list[tuple[list[Any], float]]) -> list[tuple[dict[str, float], float]]:
        """(metrics, example count x weight) per micro-batch; weight-0 ones only keep ZeRO-3 ranks in step."""
        self.engine.eval()
        evaluate = getattr(self.task, "evaluate", None)
        parts = []
        for examples, weight in micro_batches:
            batch = self._batch(examples)
            if evaluate is not None:
                metrics = evaluate(self.engine, batch)
            else:
                loss, metrics = self.task.loss(self.engine, batch)
                metrics = {"loss": float(loss), **metrics}
            parts.append(({key: float(value) for key, value in metrics.items()}, len(examples) * weight))
        return parts

    def save_checkpoint(self, directory: str) -> None:
        """DeepSpeed state (weights, optimizer, scheduler, step) + this rank's RNG; collective."""
        self.engine.save_checkpoint(directory, tag="ds", client_state={"torch_rng": torch.get_rng_state()})

    def load_checkpoint(self, directory: str) -> None:
        path, client_state = self.engine.load_checkpoint(directory, tag="ds")
        if path is None:
            raise FileNotFoundError(f"rank {self.rank}: no DeepSpeed checkpoint 'ds' in {directory}")
        torch.set_rng_state(client_state["torch_rng"])

    def export(self, directory: str) -> None:
        """HF-style export: every rank joins the ZeRO-3 gather, rank 0 writes."""
        from fgrlhf.runtime.distributed import gathered

        module = self.engine.module
        with gathered(module.parameters(), self.ds_cfg.zero_stage):
            if self.rank == 0:
                self.task.save_pretrained(module, directory)
        torch.distributed.barrier()
