"""Memory and placement plan of a training job, computed before anything is loaded (``fgrlhf plan``).

Model sizes come from each checkpoint's ``config.json`` (parameters counted on PyTorch's ``meta`` device, so
no weight is read or allocated), or from an architecture preset where the checkpoint is not on this machine.
The byte counts are plain arithmetic, each function below documenting its model:

- **Learner states** (ZeRO paper, arXiv 1910.02054, §3): per parameter, weights in the training dtype,
  gradients in the accumulation dtype, and Adam's two moments plus, under bf16 mixed precision, an fp32
  master copy (K = 12 bytes; K = 8 for plain fp32 Adam). ZeRO-1 partitions the optimizer states over the
  ranks, ZeRO-2 also the gradients, ZeRO-3 also the weights (plus the few layers gathered at a time).
- **Activations** of one micro-batch of ``rows x tokens``: what autograd keeps for the backward pass of a
  Llama-style decoder layer, counted tensor by tensor (:func:`layer_activation_elements`), times the
  layers; with gradient checkpointing only each layer's input is kept and one layer is recomputed at a
  time. Attention is taken to run in a fused SDPA/flash kernel (no ``tokens²`` score matrix is kept).
  A causal LM also holds its logits and the float32 log-softmax/entropy copies the losses take.
- **vLLM** claims ``gpu_memory_utilization`` of the device (or weights + ``kv_cache_memory_bytes``); what the
  weights and the forward pass leave of it is KV cache, ``2 x layers x kv_heads x head_dim`` values a token.
- **Host RAM**: every worker process's baseline (Python, torch, transformers, DeepSpeed, Ray) plus what it
  holds on the host: on CPU everything; on GPU the weights while they load (a ZeRO-3 learner is built
  under ``deepspeed.zero.Init`` on its GPU and reads its checkpoint one tensor at a time, so only that).
- **Checkpoints**: DeepSpeed writes the module's weights (not under ZeRO-3, whose partitions live in the
  optimizer files) and the optimizer states (fp32 master + moments); the final export is the weights once.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgrlhf.config import ConfigError

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Per process on a GPU: CUDA context, cuBLAS/NCCL workspaces and allocator slack not counted below.
CUDA_CONTEXT_GB = 1.0
# Host RSS of one worker process once torch, transformers, DeepSpeed and Ray are imported, before any model:
# tests/test_planning.py measures it and checks this figure.
PROCESS_BASELINE_GB = 0.6
# Float32 [rows, response, vocab] tensors of a causal LM's loss path at its peak (fgrlhf.algorithms.ppo_core),
# besides the head's output: the log-softmax kept for backward, the no-grad entropy statistic's softmax and
# product while the forward runs, and the gradients backward takes through the gathered log-probs, the
# log-softmax and the response-position gather. tests/test_planning.py measures a real learner step.
LOGIT_FP32_COPIES = 6
# An entropy bonus with a non-zero coefficient keeps its softmax and product for backward and runs their
# gradients: the tiny probe's peak grew from 218-251 MB to 293-405 MB with it (2026-12-07), ~5 more copies.
ENTROPY_GRAD_FP32_COPIES = 5
# Components alive only in the forward/backward pass, and only during the optimizer step: never at once.
BACKWARD_TRANSIENT = ("activations", "logits")
STEP_TRANSIENT = ("optimizer_step",)
# vLLM's default token budget of one scheduler step (its profiling run sizes the activations with it).
VLLM_MAX_BATCHED_TOKENS = 8192

# Published architectures for checkpoints that are not on this machine (``--model-config PRESET``).
PRESETS: dict[str, dict[str, Any]] = {
    "llama-7b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "llama-13b": {
        "model_type": "llama",
        "hidden_size": 5120,
        "intermediate_size": 13824,
        "num_hidden_layers": 40,
        "num_attention_heads": 40,
        "num_key_value_heads": 40,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
}


class PlanError(ConfigError):
    """The plan cannot be made (a model's architecture is unknown, a config is not a training job)."""


# --- architectures ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arch:
    """What the estimates need of a decoder: its shape and exact parameter counts."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    lm_params: int  # the causal LM (embeddings, layers, final norm, untied lm_head)
    lm_head_params: int  # 0 when tied to the embeddings
    source: str = ""

    @property
    def backbone_params(self) -> int:
        return self.lm_params - self.lm_head_params

    @property
    def rm_params(self) -> int:
        """A reward model / critic: the backbone plus ``Linear(hidden, 1)``."""
        return self.backbone_params + self.hidden + 1

    @property
    def layer_params(self) -> int:
        return (self.backbone_params - self.vocab * self.hidden) // self.layers


def arch_from_hf_config(config, source: str = "") -> Arch:
    """Shape of a transformers config; parameters counted by building the model on the ``meta`` device."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = {id(p): p.numel() for p in model.parameters()}  # a tied lm_head is the embedding: counted once
    head = model.get_output_embeddings()
    tied = head is not None and id(head.weight) == id(model.get_input_embeddings().weight)
    heads = config.num_attention_heads
    return Arch(
        hidden=config.hidden_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        intermediate=config.intermediate_size,
        vocab=config.vocab_size,
        lm_params=sum(params.values()),
        lm_head_params=0 if head is None or tied else head.weight.numel(),
        source=source,
    )


def load_arch(name: str, model_cfg=None, fallback: str | None = None) -> Arch:
    """Architecture of ``name``: ``tiny`` (the project's tiny config), ``smollm2``, a checkpoint directory
    (its config.json; an RM directory's backbone), or, when that directory is absent, ``fallback`` (a preset
    name or a config.json path)."""
    from fgrlhf.config import ModelConfig

    if name in ("tiny", "tiny-token", "tiny-sequence"):
        from fgrlhf.models import load_tokenizer, tiny_llama_config

        cfg = model_cfg or ModelConfig()
        return arch_from_hf_config(tiny_llama_config(cfg, load_tokenizer("tiny")), "tiny config")
    if name == "smollm2":
        return _from_preset("smollm2-135m")
    config_path = Path(name).expanduser() / "config.json"
    if config_path.is_file():
        return _from_json(config_path)
    if fallback is None:
        raise PlanError(
            f"model {name!r}: no config.json there; give its architecture with --model-config "
            f"PATH|PRESET (presets: {', '.join(PRESETS)})"
        )
    if fallback in PRESETS:
        return _from_preset(fallback)
    path = Path(fallback).expanduser()
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        raise PlanError(f"--model-config {fallback!r}: neither a preset ({', '.join(PRESETS)}) nor a config.json")
    return _from_json(path)


def _from_preset(preset: str) -> Arch:
    from transformers import AutoConfig

    kwargs = dict(PRESETS[preset])
    return arch_from_hf_config(AutoConfig.for_model(kwargs.pop("model_type"), **kwargs), f"preset {preset}")


def _from_json(path: Path) -> Arch:
    from transformers import AutoConfig

    raw = json.loads(path.read_text(encoding="utf-8"))
    raw.pop("fgrlhf_reward", None)  # an RM directory: its config is the backbone's plus this section
    try:
        config = AutoConfig.for_model(**raw)
    except (KeyError, ValueError) as exc:
        raise PlanError(f"{path}: not a transformers model config ({exc})") from None
    return arch_from_hf_config(config, str(path))


# --- pure arithmetic --------------------------------------------------------------------------------------
def learner_state_bytes(
    params: int,
    zero_stage: int,
    world_size: int,
    weight_bytes: int,
    mixed_precision: bool,
    grad_bytes: int | None = None,
) -> dict[str, float]:
    """Per-rank bytes of weights, gradients and Adam states (ZeRO paper's model).

    ``mixed_precision``: bf16/fp16 weights with an fp32 master copy (optimizer K = 4 + 4 + 4 bytes); else Adam's
    moments in the weights' dtype (K = 2 x weight_bytes). ``grad_bytes``: the accumulation dtype's size
    (default: the weights')."""
    grad_bytes = weight_bytes if grad_bytes is None else grad_bytes
    optimizer_k = 12 if mixed_precision else 2 * weight_bytes
    n = world_size
    weights = params * weight_bytes / (n if zero_stage >= 3 else 1)
    gradients = params * grad_bytes / (n if zero_stage >= 2 else 1)
    optimizer = params * optimizer_k / (n if zero_stage >= 1 else 1)
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer}


def zero3_live_bytes(arch: Arch, params: int, weight_bytes: int) -> float:
    """Whole parameters a ZeRO-3 rank holds at once: the layer being computed and the one prefetched (the
    embedding when it is larger), at most the model."""
    return min(params, 2 * max(arch.layer_params, arch.vocab * arch.hidden)) * weight_bytes


def layer_activation_elements(arch: Arch) -> int:
    """Values one token leaves in one Llama decoder layer for the backward pass.

    Attention block: the residual input and the RMSNorm output (2h); q after RoPE (h); k and v repeated to
    every query head (2 x heads x head_dim: transformers' ``repeat_kv``, used whenever a padding mask is
    passed); the attention output and its contiguous copy fed to o_proj (2h). MLP block: the residual input
    and the norm output (2h); gate, SiLU(gate), up and their product fed to down_proj (4i)."""
    return 7 * arch.hidden + 2 * arch.heads * arch.head_dim + 4 * arch.intermediate


def activation_bytes(
    arch: Arch,
    rows: int,
    tokens: int,
    act_bytes: int,
    checkpointing: bool,
    logit_tokens: int = 0,
    entropy_grad: bool = False,
) -> dict[str, float]:
    """Activations of one micro-batch (``rows`` sequences of ``tokens``) kept for the backward pass.

    Without checkpointing every layer keeps :func:`layer_activation_elements`; with it each layer keeps its
    input (``hidden`` values a token) and one layer's full set is rebuilt at a time. ``logit_tokens`` > 0: a
    causal LM whose loss reads that many positions a row: the head runs only there
    (:func:`fgrlhf.workers.packing.lm_response_logits`), so its ``[rows, logit_tokens, vocab]`` output and the
    float32 loss copies; ``entropy_grad``: the loss back-propagates through an entropy bonus."""
    n = rows * tokens
    per_layer = layer_activation_elements(arch) * n * act_bytes
    layers = arch.layers * arch.hidden * n * act_bytes + per_layer if checkpointing else arch.layers * per_layer
    out = {"activations": float(layers)}
    if logit_tokens:
        copies = LOGIT_FP32_COPIES + (ENTROPY_GRAD_FP32_COPIES if entropy_grad else 0)
        out["logits"] = float(rows * logit_tokens * arch.vocab * (act_bytes + 4 * copies))
    return out


def inference_bytes(arch: Arch, rows: int, tokens: int, act_bytes: int, logits: bool) -> float:
    """Transient memory of a no-grad forward: about two layers' worth of tensors alive at once, plus logits."""
    n = rows * tokens
    out = 2 * layer_activation_elements(arch) * n * act_bytes
    if logits:
        out += n * arch.vocab * (act_bytes + 4 * 2)  # logits, the float32 upcast and its log-softmax
    return float(out)


def optimizer_step_bytes(
    params: int, zero_stage: int, world_size: int, weight_bytes: int, mixed_precision: bool
) -> float:
    """Temporary of an AdamW step: the ``sqrt(v) + eps`` denominators of torch's foreach step, one value per
    parameter the rank updates, in the optimizer's dtype. The learners' fused step
    (:func:`fgrlhf.runtime.distributed.adamw`) makes none: for them it bounds the step's transient from above."""
    return float(params * (4 if mixed_precision else weight_bytes) / (world_size if zero_stage >= 1 else 1))


def kv_bytes_per_token(arch: Arch, kv_bytes: int) -> int:
    """KV cache of one token: keys and values of every layer."""
    return 2 * arch.layers * arch.kv_heads * arch.head_dim * kv_bytes


def checkpoint_bytes(params: int, zero_stage: int, weight_bytes: int, mixed_precision: bool) -> float:
    """One DeepSpeed checkpoint of a learner, all ranks together: the module's weights (absent under ZeRO-3,
    whose partitions are in the optimizer files) plus the optimizer states (fp32 master copy when mixed
    precision or ZeRO partitions it, and the two Adam moments)."""
    module = 0 if zero_stage >= 3 else params * weight_bytes
    moments = 2 * (4 if mixed_precision else weight_bytes)
    master = 4 if (mixed_precision or zero_stage >= 1) else 0
    return float(module + params * (moments + master))


# --- roles ------------------------------------------------------------------------------------------------
@dataclass
class Role:
    """One kind of actor: ``count`` of them, each with ``gpus`` GPUs (0 = CPU) and ``components`` bytes."""

    role: str
    count: int
    gpus: float
    components: dict[str, float]
    zero_stage: int | None = None
    host_load: float = 0.0  # bytes held on the host while loading, for a GPU role
    claims_device: float | None = None  # vLLM: fraction of its device claimed regardless of need
    kv_required: dict[str, float] = field(default_factory=dict)  # vLLM: KV bytes for one sequence / the batch
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> float:
        """Peak bytes: what persists, plus the larger of the backward pass's and the optimizer step's
        transients (activations are freed before the step)."""
        comps = self.components
        persistent = sum(v for k, v in comps.items() if k not in BACKWARD_TRANSIENT + STEP_TRANSIENT)
        return persistent + max(
            sum(comps.get(k, 0.0) for k in BACKWARD_TRANSIENT), sum(comps.get(k, 0.0) for k in STEP_TRANSIENT)
        )


def _learner(
    role: str,
    arch: Arch,
    params: int,
    ds,
    rows: int,
    tokens: int,
    load_dtype: str,
    logit_tokens: int,
    entropy_grad: bool = False,
) -> Role:
    """A DeepSpeed rank. At ZeRO-3 the model is built partitioned on the device and loaded one tensor at a
    time (:func:`fgrlhf.runtime.distributed.load_partitioned`): the host holds the largest tensor; below, the model."""
    weight_bytes = 2 if ds.bf16 else DTYPE_BYTES[load_dtype]
    grad_bytes = {"fp32": 4, "bf16": 2}.get(ds.grad_accum_dtype, weight_bytes)
    comps = learner_state_bytes(params, ds.zero_stage, ds.world_size, weight_bytes, ds.bf16, grad_bytes)
    if ds.zero_stage >= 3:
        comps["zero3_gathered"] = zero3_live_bytes(arch, params, weight_bytes)
    comps.update(
        activation_bytes(arch, rows, tokens, weight_bytes, ds.gradient_checkpointing, logit_tokens, entropy_grad)
    )
    comps["optimizer_step"] = optimizer_step_bytes(params, ds.zero_stage, ds.world_size, weight_bytes, ds.bf16)
    largest = max(arch.vocab * arch.hidden, arch.hidden * arch.intermediate)
    host_load = (largest if ds.zero_stage >= 3 else params) * DTYPE_BYTES[load_dtype]
    return Role(role, ds.world_size, ds.num_gpus_per_rank, comps, zero_stage=ds.zero_stage, host_load=host_load)


def _scorer(role: str, params: int, arch: Arch, dtype: str, scorer, tokens: int, logits: bool) -> Role:
    b = DTYPE_BYTES[dtype]
    comps = {
        "weights": float(params * b),
        "activations": inference_bytes(arch, scorer.micro_batch_size, tokens, b, logits),
    }
    return Role(role, 1, scorer.num_gpus, comps, host_load=params * b)


def _rollout(cfg, arch: Arch, tokens: int) -> Role:
    b = DTYPE_BYTES[cfg.policy.dtype]
    ro = cfg.rollout
    weights = float(arch.lm_params * b)
    per_actor = cfg.ppo.rollout_batch_size // ro.num_actors
    kv_token = kv_bytes_per_token(arch, b)
    if ro.engine == "hf":
        comps = {
            "weights": weights,
            "kv_cache": float(per_actor * tokens * kv_token),
            "activations": float(per_actor * arch.vocab * (b + 4 * 2)),
        }  # one step's logits
        return Role("rollout", ro.num_actors, ro.num_gpus, comps, host_load=weights)
    import inspect

    from fgrlhf.workers.vllm_engine import VLLMEngine

    defaults = {
        k: p.default
        for k, p in inspect.signature(VLLMEngine.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    opts = {**defaults, **ro.engine_kwargs}
    seqs = min(opts.get("max_num_seqs", per_actor), per_actor)
    batched = opts.get("max_num_batched_tokens") or VLLM_MAX_BATCHED_TOKENS
    forward = inference_bytes(arch, 1, batched, b, logits=False) + seqs * arch.vocab * 4
    role = Role("rollout", ro.num_actors, ro.num_gpus, {"weights": weights, "activations": forward}, host_load=0.0)
    needed = seqs * tokens * kv_token
    one_sequence = opts.get("max_model_len", tokens) * kv_token
    if opts.get("kv_cache_memory_bytes"):
        role.components["kv_cache"] = float(opts["kv_cache_memory_bytes"])
    else:
        role.claims_device = float(opts.get("gpu_memory_utilization", 0.9))
    role.notes.append(
        f"KV cache for {seqs} sequences x {tokens} tokens: {needed / GiB:.2f} GiB; "
        f"one max_model_len sequence: {one_sequence / GiB:.2f} GiB"
    )
    role.kv_required = {"one_sequence": float(one_sequence), "batch": float(needed)}
    return role


def ppo_roles(cfg, policy: Arch, reward: Arch, critic: Arch) -> list[Role]:
    tokens = cfg.prompts.max_prompt_tokens + cfg.rollout.max_new_tokens
    dtype = cfg.policy.dtype
    pol, cri = cfg.learner_ds("policy_learner"), cfg.learner_ds("critic_learner")
    return [
        _learner(
            "policy",
            policy,
            policy.lm_params,
            pol,
            pol.micro_batch_size,
            tokens,
            dtype,
            logit_tokens=cfg.rollout.max_new_tokens,
            entropy_grad=cfg.ppo.entropy_coef > 0,
        ),
        _learner("critic", critic, critic.rm_params, cri, cri.micro_batch_size, tokens, dtype, logit_tokens=0),
        _rollout(cfg, policy, tokens),
        _scorer("reward", reward.rm_params, reward, dtype, cfg.reward, tokens, logits=False),
        _scorer("reference", policy.lm_params, policy, dtype, cfg.reference, tokens, logits=True),
    ]


# --- the plan ---------------------------------------------------------------------------------------------
@dataclass
class Job:
    """What is planned: the roles, their placement, what the checkpoints hold."""

    kind: str
    roles: list[Role]
    placement: Any  # fgrlhf.runtime.placement.PlacementPlan
    checkpoint: float  # bytes of one checkpoint (all learners)
    final: float  # bytes of the final export
    keep_checkpoints: int


def _gb(value: float) -> float:
    return round(value / GiB, 3)


def evaluate(job: Job, gpu_memory_gb: float, host_ram_gb: float | None, gpus_per_node: int | None = None) -> dict:
    """Place the roles on devices and nodes, sum each device's memory, and decide whether the job fits
    (host RAM is not checked when ``host_ram_gb`` is None)."""
    from fgrlhf.runtime.placement import slot_devices

    roles = {r.role: r for r in job.roles}
    try:
        devices = slot_devices(job.placement)  # per slot: the devices Ray gives that actor
    except ValueError as exc:
        raise PlanError(f"placement: {exc}") from None
    n_gpus = 1 + max((d for ds in devices for d in ds), default=-1)
    per_node = gpus_per_node or max(n_gpus, 1)
    cap = gpu_memory_gb * GiB
    device_load: dict[int, float] = {}
    device_roles: dict[int, list[str]] = {}
    host: dict[int, float] = {}
    problems: list[str] = []
    for slot, mine in zip(job.placement.slots, devices):
        role = roles[slot.role]
        name = f"{slot.role}[{slot.index}]"
        node = mine[0] // per_node if mine else 0
        if slot.gpus > 0:
            need = role.total + CUDA_CONTEXT_GB * GiB
            if role.claims_device is not None:
                need = max(role.claims_device * cap, need)
            # All of it on the actor's first device: a rank computes on cuda:0 of what it sees, so a second
            # GPU adds nothing to hold it (and one bundle's GPUs never share an actor's load).
            device_load[mine[0]] = device_load.get(mine[0], 0.0) + need
            for d in mine:
                device_roles.setdefault(d, []).append(name)
            host[node] = host.get(node, 0.0) + PROCESS_BASELINE_GB * GiB + role.host_load
        else:
            host[node] = host.get(node, 0.0) + PROCESS_BASELINE_GB * GiB + role.total
    host[0] = host.get(0, 0.0) + PROCESS_BASELINE_GB * GiB  # the driver
    for role in job.roles:
        needed = role.kv_required
        if role.claims_device is not None and role.gpus > 0:
            kv = role.claims_device * cap - role.total
            role.components["kv_cache"] = max(kv, 0.0)
            if kv < needed["one_sequence"]:
                problems.append(
                    f"{role.role}: vLLM's {role.claims_device:.0%} of {gpu_memory_gb:g} GiB leaves "
                    f"{kv / GiB:.2f} GiB of KV cache, less than one max_model_len sequence "
                    f"({needed['one_sequence'] / GiB:.2f} GiB): raise gpu_memory_utilization"
                )
            elif kv < needed["batch"]:
                role.notes.append(
                    f"KV cache holds {kv / needed['batch']:.0%} of the rollout batch at "
                    "once: vLLM generates it in waves"
                )
    for role in job.roles:  # NCCL refuses a process group with two ranks on one device
        if role.count > 1 and role.zero_stage is not None and role.gpus > 0:
            ranks = [mine for s, mine in zip(job.placement.slots, devices) if s.role == role.role]
            shared = [d for d in {d for mine in ranks for d in mine} if sum(d in mine for mine in ranks) > 1]
            if shared:
                problems.append(
                    f"{role.role}: several ranks on GPU {', '.join(map(str, sorted(shared)))}; NCCL "
                    f"refuses two ranks of one group on one device (give each rank a whole GPU)"
                )
    for d, load in sorted(device_load.items()):
        if load > cap:
            problems.append(
                f"GPU {d} (node {d // per_node}): {', '.join(device_roles[d])} need "
                f"{load / GiB:.1f} GiB > {gpu_memory_gb:g} GiB"
            )
    host_peak = max(host.values())
    if host_ram_gb is not None and host_peak > host_ram_gb * GiB:
        node = max(host, key=host.__getitem__)
        problems.append(f"host RAM of node {node}: {host_peak / GiB:.1f} GiB > {host_ram_gb:g} GiB")
    nodes = []
    for node in range(max(1, math.ceil(n_gpus / per_node))):
        gpus = [
            {"gpu": d, "roles": device_roles.get(d, []), "memory_gb": _gb(device_load.get(d, 0.0))}
            for d in range(node * per_node, min(n_gpus, (node + 1) * per_node))
        ]
        cpu_only = [f"{s.role}[{s.index}]" for s, mine in zip(job.placement.slots, devices) if not mine and node == 0]
        nodes.append({"node": node, "gpus": gpus, "cpu_roles": cpu_only, "host_ram_gb": _gb(host.get(node, 0.0))})
    return {
        "kind": job.kind,
        "fits": not problems,
        "problems": problems,
        "gpus": n_gpus,
        "gpu_memory_gb": gpu_memory_gb,
        "host_ram_limit_gb": host_ram_gb,
        "roles": [
            {
                "role": r.role,
                "count": r.count,
                "gpus": r.gpus,
                "zero_stage": r.zero_stage,
                "device": "gpu" if r.gpus > 0 else "cpu",
                "memory_gb_per_gpu": _gb(max(r.total, (r.claims_device or 0.0) * cap)) if r.gpus > 0 else None,
                "memory_gb": _gb(r.total),
                "components_gb": {k: _gb(v) for k, v in r.components.items()},
                "notes": r.notes,
            }
            for r in job.roles
        ],
        "placement": {
            "strategy": job.placement.strategy,
            "bundles": job.placement.bundles,
            "slots": [
                {
                    "role": s.role,
                    "index": s.index,
                    "bundle": s.bundle,
                    "gpus": s.gpus,
                    "cpus": s.cpus,
                    "devices": mine,
                }
                for s, mine in zip(job.placement.slots, devices)
            ],
            "nodes": nodes,
        },
        "host_ram_gb": _gb(host_peak),
        "checkpoint_gb": _gb(job.checkpoint),
        "disk_gb": _gb(job.keep_checkpoints * job.checkpoint + job.final),
    }


def _learner_checkpoint(params: int, ds, load_dtype: str) -> float:
    weight_bytes = 2 if ds.bf16 else DTYPE_BYTES[load_dtype]
    return checkpoint_bytes(params, ds.zero_stage, weight_bytes, ds.bf16)


def ppo_job(cfg, model_config: str | None = None) -> Job:
    from fgrlhf.runtime.placement import ppo_placement

    policy = load_arch(cfg.policy.name, cfg.policy, model_config)
    reward = load_arch(cfg.reward.model, cfg.policy, model_config)
    critic_init = cfg.critic_init or cfg.reward.model
    critic = reward if critic_init == cfg.reward.model else load_arch(critic_init, cfg.policy, model_config)
    pol, cri = cfg.learner_ds("policy_learner"), cfg.learner_ds("critic_learner")
    dtype = cfg.policy.dtype
    checkpoint = _learner_checkpoint(policy.lm_params, pol, dtype) + _learner_checkpoint(critic.rm_params, cri, dtype)
    return Job(
        "ppo",
        ppo_roles(cfg, policy, reward, critic),
        ppo_placement(cfg),
        checkpoint,
        float(policy.lm_params * (2 if pol.bf16 else DTYPE_BYTES[dtype])),
        cfg.keep_checkpoints,
    )


def supervised_job(kind: str, cfg, model_config: str | None = None) -> Job:
    """RM (``rm``: backbone + head, chosen and rejected in one batch) or FIGA/SFT (``figa``: a causal LM;
    the original side's forward too when ``figa.beta`` > 0)."""
    from fgrlhf.runtime.placement import supervised_placement

    ds = cfg.deepspeed
    arch = load_arch(cfg.model.name, cfg.model, model_config)
    if kind == "rm":
        params, rows, logit_tokens = arch.rm_params, 2 * ds.micro_batch_size, 0
        tokens = cfg.max_prompt_tokens + cfg.max_response_tokens
    else:
        params, logit_tokens = arch.lm_params, cfg.data.max_response_tokens
        rows = ds.micro_batch_size * (2 if cfg.figa.beta > 0 else 1)
        tokens = cfg.data.max_prompt_tokens + cfg.data.max_response_tokens
    role = _learner("learner", arch, params, ds, rows, tokens, cfg.model.dtype, logit_tokens)
    final = float(params * (2 if ds.bf16 else DTYPE_BYTES[cfg.model.dtype]))
    return Job(
        kind,
        [role],
        supervised_placement(ds),
        _learner_checkpoint(params, ds, cfg.model.dtype),
        final,
        cfg.keep_checkpoints,
    )


# --- configs ----------------------------------------------------------------------------------------------
def detect_kind(data: dict) -> str:
    """``ppo``, ``rm`` or ``figa`` from a config's top-level keys."""
    keys = set(data)
    if keys & {"preference_data", "splits"}:  # fgrlhf paper's experiment config: it names stage configs
        raise PlanError(
            "an experiment config (fgrlhf paper) runs several jobs: `fgrlhf plan` each stage's config it names "
            "(its rm and ppo configs)"
        )
    if keys & {"ppo", "rollout", "policy_learner", "critic_learner", "reward"}:
        return "ppo"
    if keys & {"figa", "method"} or isinstance(data.get("data"), dict):
        return "figa"
    if keys & {"kind", "loss", "max_response_tokens"}:
        return "rm"
    raise PlanError(
        "not a training config: `fgrlhf plan` plans ppo (configs/ppo-*), train-rm (configs/rm-*) "
        "and figa/sft (configs/figa-*, configs/sft-*) configs"
    )


def plan_job(path: str | None, overrides: list[str], kind: str | None = None, model_config: str | None = None):
    """(kind, typed config, Job) of a config file plus overrides."""
    import yaml

    from fgrlhf.config import load_config

    if kind is None:
        if path is None:
            raise PlanError("give --config or --kind")
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise PlanError(f"config file not found: {path}") from None
        kind = detect_kind(data if isinstance(data, dict) else {})
        if kind == "figa" and ("generation" in data or "edit" in data):
            raise PlanError(f"{path} is a figa-data config (rollouts + edits, no training); plan the figa config")
    if kind == "ppo":
        from fgrlhf.trainers.ppo.config import PPOTrainConfig

        cfg = load_config(PPOTrainConfig, path, overrides)
        return kind, cfg, ppo_job(cfg, model_config)
    if kind == "rm":
        from fgrlhf.reward.train import RMTrainConfig

        rm_cfg = load_config(RMTrainConfig, path, overrides)
        return kind, rm_cfg, supervised_job(kind, rm_cfg, model_config)
    from fgrlhf.figa.config import FigaTrainConfig

    figa_cfg = load_config(FigaTrainConfig, path, overrides)
    return kind, figa_cfg, supervised_job(kind, figa_cfg, model_config)


def default_gpu_memory_gb() -> float:
    """The first CUDA device's memory where one is visible, else 80 (A100-80G, the paper's GPU)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GiB
    return 80.0


def default_host_ram_gb(job: Job) -> float | None:
    """This machine's RAM where it is the kind of node the job runs on (a CPU-only job, or CUDA is visible);
    None (not checked) for a GPU job planned away from its cluster."""
    import os

    import torch

    if job.placement.num_gpus > 0 and not torch.cuda.is_available():
        return None
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
