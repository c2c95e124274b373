"""DeepSpeed and process groups on Ray actors, and placement of actors on the cluster.

Every learner rank is a Ray actor. Rank 0 picks a free port, the driver hands ``(addr, port)`` to all ranks,
and each calls :func:`init_rank` before building its engine. CPU runs use gloo, GPU runs NCCL.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from fgrlhf.config import DeepSpeedConfig


@contextmanager
def ray_instance(num_cpus: float | None = None, dashboard: bool = False):
    """Ray for one command: reuse an initialised instance (tests, ``fgrlhf demo``), join the cluster that
    ``RAY_ADDRESS`` names (under ``ray job submit``), or start a local one for the command's duration.

    Yields the dashboard URL when this call started or joined Ray and the dashboard runs, else None.
    """
    import ray

    if ray.is_initialized():
        yield None
        return
    if os.environ.get("RAY_ADDRESS"):
        context = ray.init(address="auto")
    else:
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard)
    try:
        yield context.dashboard_url or None
    finally:
        ray.shutdown()


def node_address() -> str:
    import ray

    return ray.util.get_node_ip_address()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def resolve_backend(cfg: DeepSpeedConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_rank(rank: int, world_size: int, master_addr: str, master_port: int, backend: str) -> None:
    """Join the learner group as ``rank`` (env:// rendezvous, as ``deepspeed`` launchers do)."""
    import deepspeed

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK="0" if torch.cuda.is_available() else str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    if torch.cuda.is_available():
        # Ray sets CUDA_VISIBLE_DEVICES per actor, so each rank sees its own GPU as device 0.
        torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)


def deepspeed_config(cfg: DeepSpeedConfig, total_steps: int | None = None) -> dict[str, Any]:
    """The ``config`` dict for ``deepspeed.initialize``; the optimizer is passed in as a torch object."""
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "train_batch_size": cfg.global_batch_size,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": cfg.zero_stage},
        "bf16": {"enabled": cfg.bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if cfg.zero_stage == 3:
        # Keep small (tiny) models' parameters whole on each rank instead of partitioning 64-wide rows.
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    if cfg.warmup_steps:
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_num_steps": cfg.warmup_steps},
        }
    return config


def build_engine(model: torch.nn.Module, cfg: DeepSpeedConfig, total_steps: int | None = None):
    """Wrap ``model`` in a DeepSpeed engine with a plain torch AdamW (no fused-op compilation on CPU)."""
    import deepspeed

    if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, total_steps)
    )
    return engine, optimizer, scheduler


def gathered(params, zero_stage: int, modifier_rank: int | None = None):
    """Context in which ZeRO-3 partitioned ``params`` are whole on every rank (a no-op below stage 3)."""
    if zero_stage != 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)


@contextmanager
def full_state_dict(engine, zero_stage: int):
    """Yield the module's full (unpartitioned) state dict on every rank, e.g. to save or push weights."""
    module = engine.module
    with gathered(module.parameters(), zero_stage):
        yield {name: tensor.detach() for name, tensor in module.state_dict().items()}


def placement_group_for(bundles: list[dict[str, float]], strategy: str = "PACK"):
    """Reserve ``bundles`` (one per actor) and wait until the cluster grants them."""
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group(bundles, strategy=strategy)
    ray.get(group.ready())
    return group
