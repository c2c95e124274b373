"""PPO learner ranks: one Ray actor per DeepSpeed data-parallel rank, for the policy or the critic.

Each rank holds its shard of the rollout batch; the driver computes rewards and advantages on the whole
batch and hands every rank its slice. ``train`` runs the PPO epochs over minibatches (DeepSpeed does the
gradient accumulation and the all-reduce/ZeRO partitioning). Policy rank 0 also pushes the weights to the
rollout actors (:mod:`fgrlhf.weight_sync`); every policy rank takes part because ZeRO-3 gathers collectively.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Literal

import torch

from fgrlhf.algorithms import ppo_core
from fgrlhf.config import DeepSpeedConfig, ModelConfig
from fgrlhf.workers.packing import Packed, at_response, pack


def _micro_batches(size: int, micro: int) -> list[slice]:
    return [slice(i, min(i + micro, size)) for i in range(0, size, micro)]


class LearnerWorker:
    def __init__(self, role: Literal["policy", "critic"], rank: int, world_size: int, ds_cfg: DeepSpeedConfig,
                 policy_cfg: ModelConfig, critic_init: str | None = None,
                 critic_head_init: Literal["zero", "reward_head"] = "zero"):
        torch.set_num_threads(1)
        self.role, self.rank, self.world_size, self.ds_cfg = role, rank, world_size, ds_cfg
        self.policy_cfg, self.critic_init, self.critic_head_init = policy_cfg, critic_init, critic_head_init
        self.engine = None
        self.sync = None

    # --- set-up -----------------------------------------------------------------------------------------
    def rendezvous_address(self) -> tuple[str, int]:
        from fgrlhf.distributed import free_port, node_address

        return node_address(), free_port()

    def setup(self, master_addr: str, master_port: int) -> None:
        """Join the role's DeepSpeed world and build the engine (all ranks call this concurrently)."""
        from fgrlhf.distributed import build_engine, init_rank, resolve_backend, zero3_init
        from fgrlhf.models import load_causal_lm, load_tokenizer

        init_rank(self.rank, self.world_size, master_addr, master_port, resolve_backend(self.ds_cfg))
        self.tokenizer = load_tokenizer(self.policy_cfg.name)
        self.pad_id = self.tokenizer.pad_token_id
        tiny = self.policy_cfg.name == "tiny"
        if self.role == "policy":
            # ZeRO-3: each rank allocates only its partition while loading (the critic, whose head is
            # re-initialised after loading, is still loaded whole and partitioned by deepspeed.initialize).
            with zero3_init(self.ds_cfg, tiny_model=tiny):
                model = load_causal_lm(self.policy_cfg, self.tokenizer)
        else:
            if self.critic_init is None:
                raise ValueError("the critic needs critic_init (a reward-model directory)")
            model = load_critic(self.critic_init, self.critic_head_init)
        self.engine, self.optimizer, self.scheduler = build_engine(model, self.ds_cfg, tiny_model=tiny)
        self.device = self.engine.device

    # --- forward passes ---------------------------------------------------------------------------------
    def _forward(self, batch: Packed) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Policy: (log-probs of the response tokens, entropies); critic: (values V(s_t), None)."""
        batch = batch.to(self.device)
        if self.role == "policy":
            logits = self.engine(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            logits = at_response(logits, batch.response_index, shift=-1).float()
            return ppo_core.logprobs_from_logits(logits, batch.response_ids), ppo_core.entropy_from_logits(logits)
        from fgrlhf.reward.model import per_position_scores

        scores = per_position_scores(self.engine, batch.input_ids, batch.attention_mask)
        return at_response(scores, batch.response_index, shift=-1).float(), None

    @torch.no_grad()
    def evaluate(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> torch.Tensor:
        """Old log-probs (policy) or old values (critic) of this rank's shard, ``[B, T_shard]`` on CPU."""
        self.engine.eval()
        outs = []
        for part in _micro_batches(len(prompt_ids), self.ds_cfg.micro_batch_size):
            out, _ = self._forward(pack(prompt_ids[part], response_ids[part], self.pad_id))
            outs.append(out.cpu())
        width = max(o.size(1) for o in outs)
        return torch.cat([torch.nn.functional.pad(o, (0, width - o.size(1))) for o in outs])

    # --- PPO update -------------------------------------------------------------------------------------
    def train(self, prompt_ids: list[list[int]], response_ids: list[list[int]], tensors: dict[str, torch.Tensor],
              epochs: int, minibatch_size: int, clip_eps: float, coef: float, entropy_coef: float,
              seed: int) -> dict[str, float]:
        """PPO epochs over this rank's shard. ``tensors``: policy {old_logprobs, advantages}; critic
        {old_values, returns}, all ``[B, T]``. ``coef`` scales the loss (vf_coef for the critic)."""
        self.engine.train()
        size = len(prompt_ids)
        if size % minibatch_size:
            raise ValueError(f"shard of {size} is not a multiple of the per-rank minibatch {minibatch_size}")
        order = list(range(size))
        rng = random.Random(seed * 1009 + self.rank)
        sums: dict[str, float] = {}
        count = 0
        for _ in range(epochs):
            rng.shuffle(order)
            for start in range(0, size, minibatch_size):
                minibatch = order[start:start + minibatch_size]
                for part in _micro_batches(len(minibatch), self.ds_cfg.micro_batch_size):
                    rows = minibatch[part]
                    batch = pack([prompt_ids[i] for i in rows], [response_ids[i] for i in rows], self.pad_id)
                    width = batch.response_ids.size(1)
                    sel = {k: v[rows, :width].to(self.device) for k, v in tensors.items()}
                    mask = batch.response_mask.to(self.device)
                    stats = self._loss_and_backward(batch, sel, mask, clip_eps, coef, entropy_coef)
                    for key, value in stats.items():
                        sums[key] = sums.get(key, 0.0) + value
                    count += 1
        return {key: value / count for key, value in sums.items()}

    def _loss_and_backward(self, batch: Packed, sel: dict[str, torch.Tensor], mask: torch.Tensor,
                           clip_eps: float, coef: float, entropy_coef: float) -> dict[str, float]:
        out, entropy = self._forward(batch)
        if self.role == "policy":
            loss, stats = ppo_core.policy_loss(out, sel["old_logprobs"], sel["advantages"], mask, clip_eps)
            entropy_mean = ppo_core.masked_mean(entropy, mask)
            loss = coef * loss - entropy_coef * entropy_mean
            stats = {**_floats(stats), "policy_loss": float(loss.detach()), "entropy": float(entropy_mean.detach())}
        else:
            loss, stats = ppo_core.value_loss(out, sel["old_values"], sel["returns"], mask, clip_eps)
            loss = coef * loss
            stats = {**_floats(stats), "value_loss": float(loss.detach()) / coef if coef else 0.0}
        if not math.isfinite(float(loss.detach())):
            raise FloatingPointError(f"{self.role} rank {self.rank}: non-finite loss {float(loss)}")
        self.engine.backward(loss)
        self.engine.step()
        stats["lr"] = float(self.optimizer.param_groups[0]["lr"])
        return stats

    # --- checkpoints and weights ------------------------------------------------------------------------
    def save_checkpoint(self, directory: str, tag: str) -> None:
        self.engine.save_checkpoint(directory, tag=tag, client_state={"torch_rng": torch.get_rng_state()})

    def load_checkpoint(self, directory: str, tag: str) -> None:
        _, client_state = self.engine.load_checkpoint(directory, tag=tag)
        if client_state is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} under {directory}")
        torch.set_rng_state(client_state["torch_rng"])

    def save_hf(self, directory: str) -> None:
        """Save the full model as an HF checkpoint (rank 0 writes; every rank gathers under ZeRO-3)."""
        from fgrlhf.distributed import full_state_dict

        with full_state_dict(self.engine, self.ds_cfg.zero_stage) as state:
            if self.rank == 0:
                save_hf_checkpoint(self.engine.module, state, self.tokenizer, directory)

    def _pushed_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        # named_parameters lists a tied weight once, under its first name (lm_head.weight of a tied model is
        # the embedding): receivers re-tie by name.
        return list(self.engine.module.named_parameters())

    def weight_layout(self):
        """Names, full shapes and dtypes of the pushed parameters, in push order (no gather: a ZeRO-3
        partition records its parameter's full shape in ``ds_shape``)."""
        return [(name, tuple(getattr(p, "ds_shape", p.shape)), str(p.dtype).removeprefix("torch."))
                for name, p in self._pushed_parameters()]

    def sees_cuda(self) -> bool:
        """Whether this process has a GPU: the push backend is decided from the members, not the driver."""
        return torch.cuda.is_available()

    def join_weight_sync(self, address: str, port: int, world_size: int, backend: str, tag: str,
                         timeout_s: float) -> None:
        from fgrlhf.weight_sync import WeightSyncGroup

        self.sync = WeightSyncGroup(address, port, 0, world_size, backend, tag, timeout_s)

    def push_weights(self, bucket_mb: float) -> None:
        """Broadcast the weights from rank 0 to the rollout actors, one bucket at a time; under ZeRO-3 every
        rank takes part in gathering each bucket's parameters, so only one bucket is ever whole."""
        from fgrlhf.distributed import gathered
        from fgrlhf.weight_sync import buckets

        if self.rank == 0 and self.sync is None:
            raise RuntimeError("push_weights before join_weight_sync")
        params = [p for _, p in self._pushed_parameters()]
        for group in buckets(self.weight_layout(), bucket_mb):
            bucket = [params[i] for i in group]
            with gathered(bucket, self.ds_cfg.zero_stage):
                if self.rank == 0:
                    self.sync.send_bucket(bucket)

    def weights_checksum(self) -> dict[str, float]:
        """Per-tensor fingerprints of the full weights (call on every rank, like ``weight_layout``)."""
        from fgrlhf.distributed import full_state_dict
        from fgrlhf.weight_sync import checksums

        with full_state_dict(self.engine, self.ds_cfg.zero_stage) as state:
            return checksums(state.items())


def load_critic(rm_dir: str | Path, head_init: Literal["zero", "reward_head"]):
    """The critic: a reward model's module read as V(s_t) at every position.

    ``zero`` (AlpacaFarm) keeps the RM's backbone and starts the value head at 0, so V starts at 0 and
    learns the returns; ``reward_head`` keeps the RM's head, so V(s_t) starts as the RM's score of the
    prefix, a token reward rather than a return.
    """
    from fgrlhf.reward.model import load_reward_model

    model = load_reward_model(rm_dir)
    if head_init == "zero":
        torch.nn.init.zeros_(model.head.weight)
        torch.nn.init.zeros_(model.head.bias)
    elif head_init != "reward_head":
        raise ValueError(f"critic head init {head_init!r}: expected 'zero' or 'reward_head'")
    return model


def save_hf_checkpoint(module, state: dict[str, torch.Tensor], tokenizer, directory: str | Path) -> None:
    """Config + generation config + one ``model.safetensors`` + tokenizer, loadable by transformers and vLLM.

    Written by hand rather than ``save_pretrained``, which refuses models whose config still carries the
    GGUF ``quantization_config`` of the SmolLM2 conversion although their weights are plain floats.
    """
    import copy

    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = copy.deepcopy(module.config)
    config.__dict__.pop("quantization_config", None)
    config.save_pretrained(directory)
    module.generation_config.save_pretrained(directory)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()},
              str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(directory)


def _floats(stats: dict) -> dict[str, float]:
    return {key: float(value) for key, value in stats.items()}
