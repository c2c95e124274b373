"""DeepSpeed and process groups on Ray actors, and placement of actors on the cluster.

Every learner rank is a Ray actor. Rank 0 picks a free port, the driver hands ``(addr, port)`` to all ranks,
and each calls :func:`init_rank` before building its engine, and :func:`leave_group` before it goes. A rank
computes on the GPU Ray assigned it, else on the CPU (:func:`bind_device`); ``auto`` is NCCL on a GPU, gloo
on CPU.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from datetime import timedelta
from typing import Any

import torch

from fgrlhf.config import DeepSpeedConfig

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


@contextmanager
def ray_on_loopback():
    """Ray nodes started by this process inside the context (``ray.init(address="local")``, or
    ``ray.cluster_utils.Cluster``) bind every port to 127.0.0.1 instead of the machine's outward address.

    Ray binds its GCS, raylet, object manager, workers and agents to the node IP, by default the machine's
    outward address, so they would be open to the network (unauthenticated with ``RAY_AUTH_MODE=disabled``).
    Ray 2.60 turns ``_node_ip_address="127.0.0.1"`` back into that address; it keeps a node on loopback only
    when multi-node clusters are switched off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's default on
    macOS/Windows). The switch is read when ray is imported, which has usually happened already, so it is set
    both in Ray's constant (this process) and in the environment (the processes Ray starts, which keep it),
    and both are restored on leaving: a later ``ray.init`` in this process may join a real cluster.
    """
    from ray._private import ray_constants

    name = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(name), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


def init_local_ray(num_cpus: float | None = None, dashboard: bool = False, **kwargs):
    """Start a Ray instance for this machine alone, every port on 127.0.0.1 (:func:`ray_on_loopback`);
    returns ``ray.init``'s context. Joining a cluster (``ray.init(address="auto")``) never comes here."""
    import ray

    with ray_on_loopback():
        # ray annotates num_cpus as int, but a fractional CPU count (--num-cpus 1.5) is a valid resource total
        context = ray.init(
            address="local",
            num_cpus=num_cpus,  # type: ignore[arg-type]
            include_dashboard=dashboard,
            **kwargs,
        )
    if ray.util.get_node_ip_address() != LOOPBACK:
        log.warning(
            "local Ray bound to %s, not %s: its ports are reachable from the network",
            ray.util.get_node_ip_address(),
            LOOPBACK,
        )
    return context


@contextmanager
def exit_on_termination():
    """SIGTERM and SIGHUP (a closed terminal or SSH session) end the command through ``SystemExit`` (exit
    status 128 + signal), so ``finally`` blocks run and the local Ray instance is shut down. Without this
    SIGHUP kills the driver at once and Ray's dashboard and runtime-env agents outlive it by a minute or
    more, and under Ray's own SIGTERM handling the driver aborts (exit 134, a C++ stack dump). SIGKILL cannot
    be caught: docs/ray_job_submit.md shows how to clean up after one. Signal handlers can only be set from
    the main thread; elsewhere this is a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def leave(signum, frame):
        received.append(signum)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except SystemExit:
        if received:  # raised inside ray.get, Ray re-raises it as SystemExit(1)
            raise SystemExit(128 + received[0]) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def ray_instance(num_cpus: float | None = None, dashboard: bool = False):
    """Ray for one command: reuse an initialised instance (tests, ``fgrlhf demo``), join the cluster that
    ``RAY_ADDRESS`` names (under ``ray job submit``), or start a local one on 127.0.0.1 for the command's
    duration (:func:`init_local_ray`). SIGTERM and SIGHUP end it cleanly too (:func:`exit_on_termination`).

    Yields the dashboard URL when this call started or joined Ray and the dashboard runs, else None.
    """
    import ray

    if ray.is_initialized():
        yield None
        return
    context = ray.init(address="auto") if os.environ.get("RAY_ADDRESS") else init_local_ray(num_cpus, dashboard)
    try:
        with exit_on_termination():
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


def _ray_gpu_ids() -> list | None:
    """The GPU ids Ray assigned to this process if it is a Ray worker (a task or an actor), else None."""
    ray = sys.modules.get("ray")  # a Ray worker has always imported ray; others need not pay for it
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    return list(ray.get_gpu_ids())


def choose_device() -> torch.device:
    """The device this process computes on: ``cuda`` (its first visible GPU) or ``cpu``.

    In a Ray worker it is decided by the GPUs Ray assigned (``ray.get_gpu_ids()``), never by what CUDA can
    see: Ray >= 2.5x no longer empties ``CUDA_VISIBLE_DEVICES`` for an actor with ``num_gpus=0``, so such an
    actor on a GPU host sees every GPU and would otherwise land on GPU 0. Elsewhere (the driver, a plain
    subprocess) it is ``cuda`` when torch sees one. Ray names only the assigned GPUs in
    ``CUDA_VISIBLE_DEVICES``, so an actor's GPU is always device 0.
    """
    assigned = _ray_gpu_ids()
    if assigned is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not assigned:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"Ray assigned GPU(s) {assigned} to this process, but torch sees no CUDA device "
            f"(torch {torch.__version__}: a CPU-only build?); install a CUDA build of torch on the GPU nodes"
        )
    return torch.device("cuda", 0)


def bind_device() -> torch.device:
    """:func:`choose_device`, made to hold for every library in the process; call it first in an actor.

    On ``cpu`` in a Ray worker the GPUs Ray did not assign are hidden (``CUDA_VISIBLE_DEVICES=""``, as Ray
    itself did before 2.5x), so DeepSpeed's accelerator, which asks ``torch.cuda``, does not pick one either;
    this works until something in the process has initialised CUDA. On ``cuda`` nothing is touched: the
    process sees its GPU(s) alone, and creating a CUDA context here would cost a vLLM actor, whose engine
    computes in another process, memory on its GPU.
    """
    device = choose_device()
    if device.type == "cpu" and _ray_gpu_ids() is not None:
        if torch.cuda.is_initialized():
            log.warning("CUDA is already initialised in this CPU-only Ray worker: its GPUs stay visible")
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
    return device


def resolve_backend(configured: str, device: torch.device) -> str:
    """The process-group backend for a process on ``device``: ``auto`` is NCCL on a GPU, gloo on CPU."""
    if configured == "auto":
        return "nccl" if device.type == "cuda" else "gloo"
    if configured == "nccl" and device.type != "cuda":
        raise ValueError(
            "backend=nccl, but this rank has no GPU (num_gpus_per_rank=0, or no GPU assigned by Ray); "
            "use backend=gloo or auto"
        )
    return configured


# NCCL settings that every process of a group must share. NCCL_CUMEM_ENABLE: vLLM turns cuMem off in its
# processes at import (vllm/env_override.py) unless the environment sets it; the learners and the push
# group's other members take the same value, so every member of the learner -> vLLM push runs NCCL alike:
# the user's if set (it reaches every process through the environment), else vLLM's.
NCCL_ENV = {"NCCL_CUMEM_ENABLE": "0"}


def apply_nccl_env() -> dict[str, str]:
    """Set :data:`NCCL_ENV` in this process (an explicit value in the environment wins) before its first NCCL
    communicator is created; returns the values in force."""
    return {name: os.environ.setdefault(name, value) for name, value in NCCL_ENV.items()}


def init_rank(
    rank: int, world_size: int, master_addr: str, master_port: int, backend: str = "auto", timeout_s: float = 1800.0
) -> torch.device:
    """Join the learner group as ``rank`` (env:// rendezvous, as ``deepspeed`` launchers do) on this process's
    device (:func:`bind_device`); returns the device. ``timeout_s`` bounds the rendezvous and every collective
    of the group (NCCL's watchdog ends a rank stuck longer). Leave with :func:`leave_group`."""
    import deepspeed

    device = bind_device()
    backend = resolve_backend(backend, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # the rank's one GPU (Ray shows it as device 0): NCCL's and DeepSpeed's
    if backend == "nccl":
        apply_nccl_env()
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK="0" if device.type == "cuda" else str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timedelta(seconds=timeout_s))
    return device


def leave_group() -> None:
    """Destroy this process's default process group, if any. A process that exits with a live gloo group can
    abort in its destructors ("terminate called without an active exception"); an NCCL one leaks its
    communicator. Every process that joined a group with :func:`init_rank` calls this before it exits."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def deepspeed_config(
    cfg: DeepSpeedConfig, total_steps: int | None = None, tiny_model: bool = False, autocast: str = "none"
) -> dict[str, Any]:
    """The ``config`` dict for ``deepspeed.initialize``; the optimizer is passed in as a torch object.

    ``autocast="bf16"`` (``ModelConfig.autocast``): DeepSpeed's ``torch_autocast`` section, so the engine runs
    each forward under ``torch.autocast(bfloat16)`` over the float32 weights and optimizer state (the backward
    follows the forward's casts).

    ``tiny_model``: the random-init test model, whose parameters are all below DeepSpeed's ZeRO-3
    persistence threshold; it gets threshold 0 so that tests partition and gather every parameter as a
    real model's large ones are. Real models keep DeepSpeed's default (1e5 elements): small parameters
    (norms, biases) stay whole on every rank instead of being re-gathered on every forward and backward.
    """
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
    if cfg.zero_stage == 3 and tiny_model:
        config["zero_optimization"]["stage3_param_persistence_threshold"] = 0
    if autocast == "bf16":
        config["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    if cfg.grad_accum_dtype is not None:
        config["data_types"] = {"grad_accum_dtype": cfg.grad_accum_dtype}
    if cfg.warmup_steps:
        config["scheduler"] = {
            "type": "WarmupLR",
            "params": {"warmup_min_lr": 0.0, "warmup_max_lr": cfg.lr, "warmup_num_steps": cfg.warmup_steps},
        }
    return config


_ZERO3_LOADING: ContextVar[dict[str, Any] | None] = ContextVar("fgrlhf_zero3_loading", default=None)


@contextmanager
def zero3_init(cfg: DeepSpeedConfig, tiny_model: bool = False):
    """Load a learner's model inside this context. Under ZeRO-3, :func:`fgrlhf.models.load_causal_lm` and
    :func:`fgrlhf.reward.model.load_reward_model` then build it partitioned (:func:`partitioned_construction`)
    and copy the checkpoint in one parameter at a time (:func:`load_partitioned`), instead of every rank
    materialising the whole model on the host first; every rank of the group must load the same model.
    Below ZeRO-3 it changes nothing; models built directly from a config (``tiny``) load whole either way.
    """
    config = deepspeed_config(cfg, tiny_model=tiny_model) if cfg.zero_stage == 3 else None
    token = _ZERO3_LOADING.set(config)
    try:
        yield
    finally:
        _ZERO3_LOADING.reset(token)


def zero3_loading() -> dict[str, Any] | None:
    """The DeepSpeed config of the enclosing :func:`zero3_init` at ZeRO-3 (load partitioned), else None."""
    return _ZERO3_LOADING.get()


@contextmanager
def partitioned_construction(config: dict[str, Any]):
    """Modules constructed inside are partitioned over the ranks as each one is built (``deepspeed.zero.Init``
    with ``config``), and skip the random initialisation that :func:`load_partitioned` then overwrites."""
    import deepspeed
    from transformers.initialization import no_init_weights

    with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=config):
        yield


def _tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in one checkpoint file, safetensors or a torch ``.bin``, read without
    loading the tensors (a safetensors header; a ``.bin`` memory-mapped)."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118
    return {name: tuple(tensor.shape) for name, tensor in _load_bin(path).items()}


def _read_tensor(path: str, name: str) -> torch.Tensor:
    """One tensor of a checkpoint file; the file is opened for it alone, so nothing else of it stays mapped."""
    if path.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(path, framework="pt") as weights:
            return weights.get_tensor(name)
    return _load_bin(path)[name]


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    """A torch ``.bin`` state dict, memory-mapped (pages are read only when a tensor is used) and unpickled
    with ``weights_only`` (no code runs from the file)."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):
            raise
        raise ValueError(
            f"{path}: saved in torch's legacy (pre-1.6) format, which cannot be memory-mapped; re-save it "
            "with save_pretrained (safetensors) before loading it partitioned"
        ) from exc


def ignored_checkpoint_keys(module: torch.nn.Module, names) -> list[str]:
    """Of the checkpoint's tensor ``names`` that ``module`` does not have, those ``from_pretrained`` ignores
    too: the patterns of every transformers model class inside (``_keys_to_ignore_on_load_unexpected``), and
    the tensors a model now computes itself (its non-persistent buffers) that older exports saved, under the
    buffer's name or, moved since, its last two name parts (a 2023 LLaMA export's per-layer
    ``model.layers.N.self_attn.rotary_emb.inv_freq`` against today's one ``model.rotary_emb.inv_freq``)."""
    import re

    state = module.state_dict().keys()
    patterns = {
        pattern
        for sub in module.modules()
        for pattern in getattr(sub, "_keys_to_ignore_on_load_unexpected", None) or ()
    }
    computed = {name for name, _ in module.named_buffers()} - state
    moved = {".".join(name.split(".")[-2:]) for name in computed}
    return sorted(
        name
        for name in set(names) - state
        if name in computed
        or ".".join(name.split(".")[-2:]) in moved
        or any(re.search(pattern, name) for pattern in patterns)
    )


def load_partitioned(module: torch.nn.Module, files: list) -> None:
    """Copy the checkpoint ``files`` (safetensors or torch ``.bin``, maybe sharded) into ``module`` built by
    :func:`partitioned_construction`; every rank calls it (each gather is collective).

    One parameter at a time: it is gathered whole, rank 0 reads its tensor and writes it, and DeepSpeed
    broadcasts rank 0's copy and re-partitions it on leaving the context. Rank 0 opens the file for each
    tensor, so at most one tensor of the checkpoint is read in at a time: no rank ever holds more of the
    model than its partition plus one parameter. Persistent buffers (never partitioned) load on every rank.
    The files must hold every parameter and persistent buffer of ``module``; a tied weight's second name
    (``lm_head.weight`` tied to the embedding) may be left out, as ``save_pretrained`` does. Tensors the model
    does not have are refused, except those ``from_pretrained`` ignores too (:func:`ignored_checkpoint_keys`),
    which are logged.
    """
    import deepspeed

    source: dict[str, str] = {}  # tensor name -> file
    shapes: dict[str, tuple[int, ...]] = {}
    for path in map(str, files):
        for name, shape in _tensor_shapes(path).items():
            source[name], shapes[name] = path, shape
    state = module.state_dict().keys()  # partitioned tensors are empty: this costs nothing
    params = dict(module.named_parameters())  # a tied weight once, under its first name
    buffers = {name: buf for name, buf in module.named_buffers() if name in state}  # the persistent ones
    ignored = ignored_checkpoint_keys(module, shapes.keys())
    missing = sorted((params.keys() | buffers.keys()) - shapes.keys())
    unexpected = sorted(shapes.keys() - state - set(ignored))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {', '.join(map(str, files))} does not match the model ({type(module).__name__}): "
            f"missing {missing}, unexpected {unexpected}"
        )
    if ignored:
        log.info(
            "checkpoint tensors not loaded (the model computes them, as from_pretrained ignores them): %s", ignored
        )
    for name, tensor in {**params, **buffers}.items():
        shape = tuple(getattr(tensor, "ds_shape", tensor.shape))
        if shapes[name] != shape:
            raise ValueError(f"{source[name]}: {name} has shape {list(shapes[name])}, the model's is {list(shape)}")

    writer = torch.distributed.get_rank() == 0
    for name, param in params.items():
        with deepspeed.zero.GatheredParameters([param], modifier_rank=0), torch.no_grad():
            if writer:
                param.copy_(_read_tensor(source[name], name))
    with torch.no_grad():
        for name, buf in buffers.items():
            buf.copy_(_read_tensor(source[name], name))


def writable(params):
    """Context in which ``params`` may be modified: under ZeRO-3 they are gathered whole and rank 0's values
    are kept (broadcast and re-partitioned on leaving); for ordinary parameters DeepSpeed makes it a no-op."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=0)


def build_engine(
    model: torch.nn.Module,
    cfg: DeepSpeedConfig,
    total_steps: int | None = None,
    tiny_model: bool = False,
    autocast: str = "none",
):
    """Wrap ``model`` in a DeepSpeed engine with torch's AdamW (:func:`adamw`; DeepSpeed's own fused Adam
    would compile an op first); ``autocast``: see :func:`deepspeed_config`."""
    import deepspeed

    enable_checkpointing = getattr(model, "gradient_checkpointing_enable", None)  # transformers models have it
    if cfg.gradient_checkpointing and enable_checkpointing is not None:
        enable_checkpointing()
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, config=deepspeed_config(cfg, total_steps, tiny_model, autocast)
    )
    skip_lone_rank_allreduce(engine)
    return engine, optimizer, scheduler


FUSED_ADAMW_DEVICES = ("cpu", "cuda")


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """torch's AdamW, with its fused kernel where every parameter is a float tensor on a device that has one.
    Unfused on a CPU, torch runs the update one elementwise op at a time, each a pass over the model's size
    (6.4x the fused step's CPU time for SmolLM2-135M on one core, benchmarks/adamw.py); fused, one pass. Same
    update to float rounding; the fused one is what transformers' Trainer (so TRL) uses by default."""
    fused = all(p.is_floating_point() and p.device.type in FUSED_ADAMW_DEVICES for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


def skip_lone_rank_allreduce(engine) -> bool:
    """Turn off ZeRO-0's gradient all-reduce when the engine is its only data-parallel rank, and say whether
    it did. With nothing to reduce DeepSpeed still flattens every gradient into one buffer, scales it by
    1 / 1, "all-reduces" it and copies it back at each optimizer step: three passes over the gradients (the
    model's size) that change nothing. ZeRO-1/2/3 reduce inside their optimizers and are left alone."""
    if engine.zero_optimization_stage() != 0 or engine.dp_world_size != 1:
        return False
    engine.enable_backward_allreduce = False
    return True


def gathered(params, zero_stage: int, modifier_rank: int | None = None):
    """Context in which ZeRO-3 partitioned ``params`` are whole on every rank (a no-op below stage 3)."""
    if zero_stage != 3:
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)


def iter_full_state(module: torch.nn.Module, zero_stage: int) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every entry of ``module.state_dict()``, in its order, each whole: under ZeRO-3
    a parameter is gathered only while it is yielded, so no rank ever holds more of the model than its
    partition plus one parameter (gathering them all at once would put a whole copy on every device). A tied
    weight comes under each of its names, as in ``state_dict()``. Below ZeRO-3 it is the state dict itself.

    Each gather is collective: every rank must exhaust the iterator. A yielded tensor is valid only until
    the next one is asked for (its gathered storage is then released); copy what you keep.
    """
    # keep_vars: the Parameter objects themselves, which GatheredParameters needs (their data is empty while
    # partitioned, so this costs nothing); buffers are never partitioned, and gathering them is a no-op.
    for name, tensor in module.state_dict(keep_vars=True).items():
        with gathered([tensor], zero_stage):
            yield name, tensor.detach()


def placement_group_for(bundles: list[dict[str, float]], strategy: str = "PACK"):
    """Reserve ``bundles`` (one per actor) and wait until the cluster grants them."""
    import ray
    from ray.util.placement_group import placement_group

    group = placement_group(bundles, strategy=strategy)
    ray.get(group.ready())
    return group
