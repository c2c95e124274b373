"""PPO learner ranks: one Ray actor per DeepSpeed data-parallel rank, :class:`PolicyLearner` or
:class:`CriticLearner` over the shared :class:`DeepSpeedLearner`.

Data stays where it is used: ``evaluate`` gets the whole rollout batch (one object-store copy shared by every
actor), keeps this rank's contiguous shard with its old log-probs/values, and returns the latter; the driver
computes rewards and advantages on the whole batch and ``train`` receives only this shard's advantages
(policy) or returns (critic). ``train`` runs the PPO epochs over minibatches (DeepSpeed does the gradient
accumulation and the all-reduce/ZeRO partitioning). Policy rank 0 also pushes the weights to the rollout
actors (:mod:`fgrlhf.runtime.weight_sync`); every policy rank takes part because ZeRO-3 gathers collectively.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from fgrlhf.algorithms import ppo_core
from fgrlhf.config import DeepSpeedConfig, ModelConfig
from fgrlhf.workers.packing import (
    Batch,
    at_response,
    build,
    lengths_of,
    lm_response_logits,
    micro_batches,
    minibatch_schedule,
    plan_micro_batches,
    resolve_layout,
    split,
    split_to_count,
)

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from fgrlhf.runtime.weight_sync import WeightSyncGroup


@dataclass(frozen=True)
class PPOUpdate:
    """The settings of one ``train`` call, the same for every rank of a role."""

    epochs: int
    minibatch_size: int  # rows of this rank's shard per optimizer step
    clip_eps: float  # the ratio clip (policy) or the value clip (critic)
    coef: float  # scales the loss: 1 for the policy, vf_coef for the critic
    entropy_coef: float = 0.0  # policy only
    seed: int = 0  # minibatch order, with the rank


class DeepSpeedLearner(ABC):
    """One DeepSpeed rank holding a model, its shard of the rollout and the PPO epochs over it; a subclass
    builds the model, scores the shard (``_evaluate_batch``) and computes the loss (``_loss``)."""

    role: str
    engine: DeepSpeedEngine  # built by setup(), the first call after rendezvous_address

    def __init__(self, rank: int, world_size: int, ds_cfg: DeepSpeedConfig, policy_cfg: ModelConfig):
        from fgrlhf.runtime.distributed import bind_device

        torch.set_num_threads(1)
        bind_device()  # before anything asks CUDA: a CPU rank must not see the host's GPUs
        self.rank, self.world_size, self.ds_cfg, self.policy_cfg = rank, world_size, ds_cfg, policy_cfg
        # this rank's shard of the latest rollout, kept by evaluate() for train()
        self.prompt_ids: list[list[int]] = []
        self.response_ids: list[list[int]] = []
        self.old: torch.Tensor | None = None  # [B/W, T_shard] old log-probs (policy) or old values (critic)

    # --- set-up -----------------------------------------------------------------------------------------
    def rendezvous_address(self) -> tuple[str, int]:
        from fgrlhf.runtime.distributed import free_port, node_address

        return node_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the role's DeepSpeed world and build the engine (all ranks call this concurrently)."""
        from fgrlhf.models import load_tokenizer
        from fgrlhf.runtime.distributed import build_engine, init_rank

        init_rank(self.rank, self.world_size, master_addr, master_port, self.ds_cfg.backend, self.ds_cfg.timeout_s)
        self.tokenizer = load_tokenizer(self.policy_cfg.name)
        self.pad_id = self.tokenizer.pad_token_id
        tiny = self.policy_cfg.name == "tiny"
        self.engine, self.optimizer, self.scheduler = build_engine(
            self._build_model(), self.ds_cfg, tiny_model=tiny, autocast=self.policy_cfg.autocast
        )
        self.device = self.engine.device
        self.layout = resolve_layout(self.ds_cfg.packing, self.engine.module, self.device)

    @abstractmethod
    def _build_model(self) -> torch.nn.Module:
        """The role's model, built after the process group exists (ZeRO-3 may partition it while loading)."""

    @abstractmethod
    def _evaluate_batch(self, batch: Batch) -> torch.Tensor:
        """``[b, t]`` old log-probs of the response tokens (policy) or values V(s_t) (critic)."""

    @abstractmethod
    def _loss(
        self, batch: Batch, old: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, update: PPOUpdate
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The role's PPO loss of one micro-batch and its stats; ``target``: advantages or returns."""

    # --- the rollout shard --------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, prompt_ids: list[list[int]], response_ids: list[list[int]], old: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Keep this rank's shard of the batch (the rank-th of ``world_size`` contiguous equal slices) for
        :meth:`train`; return its old log-probs (policy) or old values (critic), ``[B / W, T_shard]`` on CPU.

        ``old`` ``[B, T]``: the whole batch's old log-probs when they are known already, under
        ``ppo.async_rollout`` the behaviour policy's from the rollout actors; this rank keeps its rows rather
        than computing them with its own weights, which are one update ahead of the sampler's (see
        :meth:`fgrlhf.trainers.ppo.trainer.PPOTrainer._rollout`)."""
        self.prompt_ids = split(prompt_ids, self.world_size)[self.rank]
        self.response_ids = split(response_ids, self.world_size)[self.rank]
        if old is not None:
            size, width = len(self.prompt_ids), max(len(r) for r in self.response_ids)
            self.old = old[self.rank * size : (self.rank + 1) * size, :width].clone()
            return self.old
        self.engine.eval()
        (plan,) = self._plans([list(range(len(self.prompt_ids)))])
        self.old = torch.zeros(len(self.prompt_ids), max(len(r) for r in self.response_ids))
        for rows, batch in micro_batches(self.prompt_ids, self.response_ids, self.pad_id, self.layout, plan):
            batch = batch.to(self.device)
            out = (self._evaluate_batch(batch) * batch.response_mask).cpu()  # 0 on padding, in every layout
            self.old[rows, : out.size(1)] = out
        return self.old

    def _plans(self, minibatches: list[list[int]]) -> list[list[list[int]]]:
        """Each minibatch's micro-batches (rows of the shard), :func:`plan_micro_batches`. Under a token budget
        the ranks agree on the most micro-batches any of them needs for each minibatch and cut theirs to as
        many: ZeRO-2/3 reduce or gather collectively at every forward/backward."""
        lengths = lengths_of(self.prompt_ids, self.response_ids)
        budget, size = self.ds_cfg.max_tokens_per_micro_batch, self.ds_cfg.micro_batch_size
        plans = [
            [
                [rows[k] for k in group]
                for group in plan_micro_batches([lengths[i] for i in rows], self.layout, size, budget)
            ]
            for rows in minibatches
        ]
        if budget is None or self.world_size == 1:
            return plans  # equal shards and a fixed row count: every rank has as many already
        counts = torch.tensor([len(plan) for plan in plans], device=self.device)
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
        return [split_to_count(plan, lengths, int(n), self.layout) for plan, n in zip(plans, counts.tolist())]

    # --- PPO update -------------------------------------------------------------------------------------
    def train(self, targets: torch.Tensor, update: PPOUpdate) -> dict[str, float]:
        """PPO epochs over the shard :meth:`evaluate` kept. ``targets`` ``[B / W, T]``: this shard's advantages
        (policy) or returns (critic), right-padded like every per-token tensor."""
        if self.old is None:
            raise RuntimeError(f"{self.role} rank {self.rank}: train before evaluate (no rollout shard kept)")
        size = len(self.prompt_ids)
        if targets.size(0) != size:
            raise ValueError(f"{targets.size(0)} target rows for a shard of {size}")
        if size % update.minibatch_size:
            raise ValueError(f"shard of {size} is not a multiple of the per-rank minibatch {update.minibatch_size}")
        self.engine.train()
        minibatches = minibatch_schedule(size, update.minibatch_size, update.epochs, update.seed, self.rank)
        sums: dict[str, float] = {}
        for plan in self._plans(minibatches):
            tokens = sum(len(self.response_ids[i]) for rows in plan for i in rows)
            for k, rows in enumerate(plan):
                batch = build(
                    [self.prompt_ids[i] for i in rows], [self.response_ids[i] for i in rows], self.pad_id, self.layout
                ).to(self.device)
                width = batch.response_ids.size(1)
                old, target = (t[rows, :width].to(self.device) for t in (self.old, targets))
                # The losses are token means: weighted by its share of the minibatch's response tokens, the
                # micro-batches' losses sum to the whole minibatch's, however it was cut.
                share = sum(len(self.response_ids[i]) for i in rows) / tokens
                stats = self._loss_and_backward(batch, old, target, update, share, boundary=k == len(plan) - 1)
                for key, value in stats.items():
                    sums[key] = sums.get(key, 0.0) + value * share
        return {key: value / len(minibatches) for key, value in sums.items()}

    def _loss_and_backward(
        self, batch: Batch, old: torch.Tensor, target: torch.Tensor, update: PPOUpdate, share: float, boundary: bool
    ) -> dict[str, float]:
        """One micro-batch: backward of ``share`` x its loss; the optimizer steps at the minibatch's last
        (``boundary``), however many micro-batches the minibatch has (not DeepSpeed's fixed count)."""
        self.engine.set_gradient_accumulation_boundary(boundary)
        loss, stats = self._loss(batch, old, target, batch.response_mask, update)
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"{self.role} rank {self.rank}: non-finite loss {float(loss)}")
        self.engine.backward(loss * share, scale_wrt_gas=False)
        self.engine.step()
        stats["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return stats

    def close(self) -> None:
        """Leave the learner group before the actor goes (:meth:`fgrlhf.runtime.actor_group.ActorGroup.shutdown`)."""
        from fgrlhf.runtime.distributed import leave_group

        leave_group()

    def device_stats(self) -> dict[str, float]:
        """This actor's GPU memory and utilisation (:func:`fgrlhf.runtime.device_stats.device_stats`)."""
        from fgrlhf.runtime.device_stats import device_stats

        return device_stats()

    # --- checkpoints and weights ------------------------------------------------------------------------
    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag, client_state={"torch_rng": torch.get_rng_state()})

    def load_checkpoint(self, directory: str, tag: str) -> None:
        _, client_state = self.engine.load_checkpoint(directory, tag=tag)
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        torch.set_rng_state(client_state["torch_rng"])

    def save_hf(self, directory: str) -> None:
        """Save the full model as an HF checkpoint (call on every rank). Under ZeRO-3 every rank takes part in
        gathering one parameter at a time; rank 0 copies each to the host as it comes, then writes."""
        from fgrlhf.runtime.distributed import iter_full_state

        state = iter_full_state(self.engine.module, self.ds_cfg.zero_stage)
        if self.rank == 0:
            save_hf_checkpoint(self.engine.module, state, self.tokenizer, directory)
        else:
            for _ in state:  # each gather is collective: take part in all of rank 0's
                pass

    def weights_checksum(self) -> dict[str, float]:
        """Per-tensor fingerprints of the full weights (call on every rank: under ZeRO-3 each parameter is
        gathered in turn and fingerprinted while whole)."""
        from fgrlhf.runtime.distributed import iter_full_state
        from fgrlhf.runtime.weight_sync import checksums

        return checksums(iter_full_state(self.engine.module, self.ds_cfg.zero_stage))


class PolicyLearner(DeepSpeedLearner):
    """A policy rank: log-probs, the clipped surrogate with an entropy bonus, and the weight push."""

    role = "policy"

    def __init__(self, rank: int, world_size: int, ds_cfg: DeepSpeedConfig, policy_cfg: ModelConfig):
        super().__init__(rank, world_size, ds_cfg, policy_cfg)
        self.sync: WeightSyncGroup | None = None  # rank 0's end of the push group (join_weight_sync)

    def _build_model(self) -> torch.nn.Module:
        from fgrlhf.models import load_causal_lm
        from fgrlhf.runtime.distributed import zero3_init

        # ZeRO-3: each rank allocates only its partition while loading.
        with zero3_init(self.ds_cfg, tiny_model=self.policy_cfg.name == "tiny"):
            return load_causal_lm(self.policy_cfg, self.tokenizer)

    def _response_logits(self, batch: Batch) -> torch.Tensor:
        return lm_response_logits(self.engine, batch.response_index, **batch.inputs(), use_cache=False).float()

    def _evaluate_batch(self, batch: Batch) -> torch.Tensor:
        return ppo_core.logprobs_from_logits(self._response_logits(batch), batch.response_ids)

    def _loss(
        self, batch: Batch, old: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, update: PPOUpdate
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self._response_logits(batch)
        logprobs = ppo_core.logprobs_from_logits(logits, batch.response_ids)
        loss, stats = ppo_core.policy_loss(logprobs, old, target, mask, update.clip_eps)
        entropy_term, entropy_mean = ppo_core.entropy_bonus(logits, mask, update.entropy_coef)
        loss = update.coef * loss + entropy_term
        return loss, {**_floats(stats), "policy_loss": float(loss.detach()), "entropy": float(entropy_mean.detach())}

    # --- weights to the rollout actors -------------------------------------------------------------------
    def _pushed_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        # named_parameters lists a tied weight once, under its first name (lm_head.weight of a tied model is
        # the embedding): receivers re-tie by name.
        return list(self.engine.module.named_parameters())

    def weight_layout(self):
        """Names, full shapes and dtypes of the pushed parameters, in push order (no gather: a ZeRO-3
        partition records its parameter's full shape in ``ds_shape``)."""
        return [
            (name, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."))
            for name, p in self._pushed_parameters()
        ]

    def sees_cuda(self) -> bool:
        """Whether this rank computes on a GPU: the push backend is decided from the members, not the driver."""
        from fgrlhf.runtime.distributed import choose_device

        return choose_device().type == "cuda"

    def join_weight_sync(
        self, address: str, port: int, world_size: int, backend: str, tag: str, timeout_s: float
    ) -> None:
        from fgrlhf.runtime.weight_sync import WeightSyncGroup

        if self.sync is not None:  # a rebuilt push group replaces the old one
            self.sync.close()
        self.sync = WeightSyncGroup(address, port, 0, world_size, backend, tag, timeout_s)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
            self.sync = None
        super().close()

    def push_weights(self, bucket_mb: float) -> None:
        """Broadcast the weights from rank 0 to the rollout actors, one bucket at a time; under ZeRO-3 every
        rank takes part in gathering each bucket's parameters, so only one bucket is ever whole."""
        from fgrlhf.runtime.distributed import gathered
        from fgrlhf.runtime.weight_sync import buckets

        if self.rank == 0 and self.sync is None:
            raise RuntimeError("push_weights before join_weight_sync")
        params = [p for _, p in self._pushed_parameters()]
        for group in buckets(self.weight_layout(), bucket_mb):
            bucket = [params[i] for i in group]
            with gathered(bucket, self.ds_cfg.zero_stage):
                if self.rank == 0:
                    assert self.sync is not None  # checked on entry
                    self.sync.send_bucket(bucket)


class CriticLearner(DeepSpeedLearner):
    """A critic rank: a reward model's module read as V(s_t) (:func:`load_critic`), the clipped value loss."""

    role = "critic"

    def __init__(
        self,
        rank: int,
        world_size: int,
        ds_cfg: DeepSpeedConfig,
        policy_cfg: ModelConfig,
        critic_init: str,
        head_init: Literal["zero", "reward_head"] = "zero",
    ):
        super().__init__(rank, world_size, ds_cfg, policy_cfg)
        self.critic_init, self.head_init = critic_init, head_init

    def _build_model(self) -> torch.nn.Module:
        from fgrlhf.runtime.distributed import zero3_init

        # ZeRO-3: each rank allocates only its partition while loading.
        with zero3_init(self.ds_cfg, tiny_model=self.policy_cfg.name == "tiny"):
            return load_critic(self.critic_init, self.head_init, self.policy_cfg.attn_implementation)

    def _evaluate_batch(self, batch: Batch) -> torch.Tensor:
        from fgrlhf.reward.model import per_position_scores

        scores = per_position_scores(self.engine, **batch.inputs())
        return at_response(scores, batch.response_index, shift=-1).float()

    def _loss(
        self, batch: Batch, old: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, update: PPOUpdate
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, stats = ppo_core.value_loss(self._evaluate_batch(batch), old, target, mask, update.clip_eps)
        loss = update.coef * loss
        return loss, {**_floats(stats), "value_loss": float(loss.detach()) / update.coef if update.coef else 0.0}


def load_critic(rm_dir: str | Path, head_init: Literal["zero", "reward_head"], attn_implementation: str | None = None):
    """The critic: a reward model's module read as V(s_t) at every position.

    ``zero`` (AlpacaFarm) keeps the RM's backbone and starts the value head at 0, so V starts at 0 and
    learns the returns; ``reward_head`` keeps the RM's head, so V(s_t) starts as the RM's score of the
    prefix, a token reward rather than a return. Under ZeRO-3 (:func:`fgrlhf.runtime.distributed.zero3_init`) the
    model comes partitioned and the head is zeroed through a gather.
    """
    from fgrlhf.reward.model import load_reward_model
    from fgrlhf.runtime.distributed import writable

    if head_init not in ("zero", "reward_head"):
        raise ValueError(f"critic head init {head_init!r}: expected 'zero' or 'reward_head'")
    model = load_reward_model(rm_dir, attn_implementation=attn_implementation)
    if head_init == "zero":
        with writable(model.head.parameters()):
            torch.nn.init.zeros_(model.head.weight)
            torch.nn.init.zeros_(model.head.bias)
    return model


def save_hf_checkpoint(module, state: Iterable[tuple[str, torch.Tensor]], tokenizer, directory: str | Path) -> None:
    """Config + generation config + one ``model.safetensors`` + tokenizer, loadable by transformers and vLLM.

    ``state``: the full weights as ``(name, tensor)`` pairs, a state dict's ``items()`` or
    :func:`fgrlhf.runtime.distributed.iter_full_state`, each copied to the host as it comes; all are taken before
    anything is written, so a failed write cannot leave other ranks waiting in a gather. Written by hand
    rather than ``save_pretrained``, which refuses models whose config still carries the GGUF
    ``quantization_config`` of the SmolLM2 conversion although their weights are plain floats.
    """
    import copy

    from safetensors.torch import save_file

    # Copies share no memory (safetensors refuses a tied weight's two names on one storage).
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in state}
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(module.config)
    config.__dict__.pop("quantization_config", None)
    config.save_pretrained(directory)
    module.generation_config.save_pretrained(directory)
    save_file(
        tensors,
        str(directory / "model.safetensors"),
        metadata={"format": "pt"},
    )
    tokenizer.save_pretrained(directory)


def _floats(stats: dict) -> dict[str, float]:
    return {key: float(value) for key, value in stats.items()}
