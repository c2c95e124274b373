"""PPO with token-level rewards, orchestrated over Ray actors (orchestration only: no model code here).

One step: prompts → rollout actors generate → in parallel, the RM scores, the reference model gives
log-probs and the policy/critic learners give old log-probs/values → rewards (KL shaping per
``ppo.reward_mode``), GAE and whitening on the driver → policy and critic PPO updates in parallel → the
policy's weights are pushed to the rollout actors. Metrics go to ``DIR/metrics.jsonl``, TensorBoard
(``DIR/tb``), the Ray dashboard (``ray.util.metrics``) and a tqdm bar; checkpoints to
``DIR/checkpoints/step_N`` (resumable); the final policy to ``DIR/final`` as an HF checkpoint.

A rollout, reward or reference actor that dies is restarted by Ray (``max_restarts``); the driver waits for
it, re-pushes the current weights to rollout actors and redoes the phase in flight.
"""

from __future__ import annotations

import importlib
import json
import logging
import random
import shutil
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from fgrlhf.config import DeepSpeedConfig, ModelConfig, StrictModel
from fgrlhf.data import ALPACA_EVAL_SET

log = logging.getLogger(__name__)


class PromptsConfig(StrictModel):
    path: str = ALPACA_EVAL_SET
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    max_prompt_tokens: int = Field(192, ge=1, description="longer prompts keep their end")


class RolloutConfig(StrictModel):
    engine: Literal["hf", "vllm"] = "hf"
    num_actors: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    max_new_tokens: int = Field(300, ge=1)
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    engine_kwargs: dict = Field(default_factory=dict, description="extra VLLMEngine/HFEngine arguments")


class ScorerConfig(StrictModel):
    """A frozen-model actor (reward or reference)."""

    num_cpus: float = Field(1.0, gt=0.0)
    num_gpus: float = Field(0.0, ge=0.0)
    micro_batch_size: int = Field(8, ge=1)


class RewardConfig(ScorerConfig):
    model: str = Field(..., description="reward-model directory (TokenRewardModel or SequenceRewardModel)")


class PPOAlgoConfig(StrictModel):
    """AlpacaFarm's defaults (FACTS.md) unless noted."""

    reward_mode: Literal["sequence", "token", "fine_grained_sequence"] = "sequence"
    kl_coef: float = Field(0.0067, ge=0.0)
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_clamp: float | None = Field(None, description="clamp of the per-token KL estimate (None = off)")
    gamma: float = Field(1.0, ge=0.0, le=1.0)
    lam: float = Field(1.0, ge=0.0, le=1.0)
    clip_eps: float = Field(0.2, gt=0.0)
    value_clip_eps: float = Field(0.2, gt=0.0)
    vf_coef: float = Field(0.1, ge=0.0)
    entropy_coef: float = Field(0.0, ge=0.0)
    epochs: int = Field(2, ge=1)
    rollout_batch_size: int = Field(512, ge=1)
    step_batch_size: int = Field(256, ge=1, description="global minibatch per optimizer step")
    whiten_rewards: bool = True
    center_token_rewards: bool = Field(
        True, description="token mode: subtract the batch mean token reward (Eq. 3 leaves its level arbitrary)")
    whiten_advantages: bool = True


class PlacementConfig(StrictModel):
    mode: Literal["separate", "colocated"] = "separate"
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"


class WeightSyncConfig(StrictModel):
    bucket_mb: float = Field(64.0, gt=0.0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    timeout_s: float = Field(300.0, gt=0.0)


class PPOTrainConfig(StrictModel):
    policy: ModelConfig = Field(default_factory=ModelConfig)
    reward: RewardConfig
    critic_init: str | None = Field(None, description="critic's initial weights; default: the RM (AlpacaFarm)")
    prompts: PromptsConfig = Field(default_factory=PromptsConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    reference: ScorerConfig = Field(default_factory=ScorerConfig)
    ppo: PPOAlgoConfig = Field(default_factory=PPOAlgoConfig)
    policy_learner: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    critic_learner: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    weight_sync: WeightSyncConfig = Field(default_factory=WeightSyncConfig)
    steps: int = Field(10, ge=1)
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = Field(2, ge=1)
    max_actor_restarts: int = Field(3, ge=0, description="per rollout/reward/reference actor")
    gold_reward: str | None = Field(None, description="'module:function' (prompts, responses) -> list[float]")
    seed: int = 0

    @model_validator(mode="after")
    def _check_batches(self) -> PPOTrainConfig:
        ppo = self.ppo
        if ppo.rollout_batch_size % ppo.step_batch_size:
            raise ValueError(f"ppo.rollout_batch_size {ppo.rollout_batch_size} must be a multiple of "
                             f"ppo.step_batch_size {ppo.step_batch_size}")
        if ppo.rollout_batch_size % self.rollout.num_actors:
            raise ValueError("ppo.rollout_batch_size must be a multiple of rollout.num_actors")
        for name in ("policy_learner", "critic_learner"):
            ds: DeepSpeedConfig = getattr(self, name)
            per_rank = ppo.step_batch_size // ds.world_size
            if ppo.step_batch_size % ds.world_size or per_rank % ds.micro_batch_size:
                raise ValueError(f"ppo.step_batch_size {ppo.step_batch_size} must split into {name}.world_size "
                                 f"{ds.world_size} ranks × a multiple of {name}.micro_batch_size "
                                 f"{ds.micro_batch_size}")
        return self

    def learner_ds(self, name: str) -> DeepSpeedConfig:
        """The learner's DeepSpeed config with gradient accumulation set so one optimizer step = one minibatch."""
        ds: DeepSpeedConfig = getattr(self, name)
        gas = self.ppo.step_batch_size // ds.world_size // ds.micro_batch_size
        return ds.model_copy(update={"gradient_accumulation_steps": gas})


# --- prompts ----------------------------------------------------------------------------------------------
def load_prompt_ids(cfg: PPOTrainConfig) -> tuple[list[str], list[list[int]]]:
    from fgrlhf.data import load_prompts
    from fgrlhf.models import load_tokenizer
    from fgrlhf.tokenization import encode_prompt, format_prompt

    tokenizer = load_tokenizer(cfg.policy.name)
    records = load_prompts(cfg.prompts.path, limit=cfg.prompts.limit)
    texts = [format_prompt(tokenizer, r["prompt"], cfg.policy.prompt_format, r.get("input", "") or "")
             for r in records]
    return texts, [encode_prompt(tokenizer, t, cfg.prompts.max_prompt_tokens) for t in texts]


def batch_indices(num_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Prompt indices of ``step`` (0-based): a fresh seeded permutation per pass over the data, so the
    order depends only on (seed, step) and a resumed run sees exactly the batches it would have."""
    start = step * batch_size
    out = []
    for position in range(start, start + batch_size):
        epoch, offset = divmod(position, num_prompts)
        order = list(range(num_prompts))
        random.Random(seed * 7919 + epoch).shuffle(order)
        out.append(order[offset])
    return out


def load_gold(spec: str | None) -> Callable[[list[str], list[str]], list[float]] | None:
    if spec is None:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"gold_reward {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module_name), attr)


TINY_RMS = {"tiny-token": "token", "tiny-sequence": "sequence"}


def save_tiny_reward_model(kind: str, policy_cfg: ModelConfig, path: Path) -> None:
    """A random-init RM on the tiny policy's backbone shape (deterministic from ``policy_cfg.seed``)."""
    import torch
    from transformers import LlamaModel

    from fgrlhf.models import load_tokenizer, tiny_llama_config
    from fgrlhf.reward.model import SequenceRewardModel, TokenRewardModel

    cls = TokenRewardModel if kind == "token" else SequenceRewardModel
    with torch.random.fork_rng():
        torch.manual_seed(policy_cfg.seed + 1)
        model = cls(LlamaModel(tiny_llama_config(policy_cfg, load_tokenizer(policy_cfg.name))))
    model.save_pretrained(str(path))


# --- metrics ----------------------------------------------------------------------------------------------
class MetricsSink:
    """metrics.jsonl + TensorBoard + Ray dashboard gauges; each step's record is flushed at once."""

    def __init__(self, out_dir: Path, resume_step: int):
        from torch.utils.tensorboard import SummaryWriter

        self.path = out_dir / "metrics.jsonl"
        if self.path.exists():  # drop steps after the checkpoint we resume from: they are redone
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        self.writer = SummaryWriter(str(out_dir / "tb"), purge_step=resume_step + 1)
        self.gauges: dict = {}
        self.phase_hist = None

    def _ray_metrics(self, record: dict) -> None:
        from ray.util import metrics

        if self.phase_hist is None:
            self.phase_hist = metrics.Histogram(
                "fgrlhf_ppo_phase_seconds", description="seconds per PPO phase",
                boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300], tag_keys=("phase",))
        for key, value in record.items():
            if isinstance(value, (int, float)):
                if key not in self.gauges:
                    self.gauges[key] = metrics.Gauge(f"fgrlhf_ppo_{key}", description=f"PPO {key}")
                self.gauges[key].set(float(value))
        for phase, seconds in record["phase_seconds"].items():
            self.phase_hist.observe(seconds, tags={"phase": phase})

    def write(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        step = record["step"]
        for key, value in record.items():
            if isinstance(value, (int, float)) and key != "step":
                self.writer.add_scalar(f"ppo/{key}", value, step)
        for phase, seconds in record["phase_seconds"].items():
            self.writer.add_scalar(f"phase_seconds/{phase}", seconds, step)
        self.writer.flush()
        self._ray_metrics(record)

    def close(self) -> None:
        self.writer.close()


# --- actors -----------------------------------------------------------------------------------------------
class Cluster:
    """Creates the actors in one placement group (``separate``: a bundle per actor; ``colocated``: actor i of
    every role shares bundle i, so e.g. rollout, reference and learner rank 0 split one GPU)."""

    def __init__(self, cfg: PPOTrainConfig):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from fgrlhf.distributed import placement_group_for
        from fgrlhf.models import load_tokenizer
        from fgrlhf.workers.learner_worker import LearnerWorker
        from fgrlhf.workers.reference_worker import ReferenceWorker
        from fgrlhf.workers.reward_worker import RewardWorker
        from fgrlhf.workers.rollout_worker import RolloutWorker

        self.cfg = cfg
        pol, cri = cfg.learner_ds("policy_learner"), cfg.learner_ds("critic_learner")
        # (role, index, cpus, gpus) for every actor
        specs = ([("policy", i, pol.num_cpus_per_rank, pol.num_gpus_per_rank) for i in range(pol.world_size)]
                 + [("critic", i, cri.num_cpus_per_rank, cri.num_gpus_per_rank) for i in range(cri.world_size)]
                 + [("rollout", i, cfg.rollout.num_cpus, cfg.rollout.num_gpus) for i in range(cfg.rollout.num_actors)]
                 + [("reward", 0, cfg.reward.num_cpus, cfg.reward.num_gpus),
                    ("reference", 0, cfg.reference.num_cpus, cfg.reference.num_gpus)])
        if cfg.placement.mode == "separate":
            slots = list(range(len(specs)))
        else:
            slots = [index for _, index, _, _ in specs]
        bundles = [{"CPU": 0.0, "GPU": 0.0} for _ in range(max(slots) + 1)]
        for slot, (_, _, cpus, gpus) in zip(slots, specs):
            bundles[slot]["CPU"] += cpus
            bundles[slot]["GPU"] += gpus
        bundles = [{k: v for k, v in b.items() if v > 0} for b in bundles]
        self.group = placement_group_for(bundles, cfg.placement.strategy)

        def options(slot: int, cpus: float, gpus: float, restartable: bool) -> dict:
            opts = dict(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.group, placement_group_bundle_index=slot))
            if restartable:
                opts["max_restarts"] = cfg.max_actor_restarts
            return opts

        slot_of = {(role, index): slot for slot, (role, index, _, _) in zip(slots, specs)}
        res = {(role, index): (cpus, gpus) for role, index, cpus, gpus in specs}
        pad_id = load_tokenizer(cfg.policy.name).pad_token_id

        def make(cls, role, index, restartable, *args):
            return ray.remote(cls).options(**options(slot_of[role, index], *res[role, index], restartable)).remote(*args)

        self.policy = [make(LearnerWorker, "policy", i, False, "policy", i, pol.world_size, pol, cfg.policy)
                       for i in range(pol.world_size)]
        critic_init = cfg.critic_init or cfg.reward.model
        self.critic = [make(LearnerWorker, "critic", i, False, "critic", i, cri.world_size, cri, cfg.policy,
                            critic_init) for i in range(cri.world_size)]
        self.rollout = [make(RolloutWorker, "rollout", i, True, cfg.rollout.engine, cfg.policy,
                             cfg.rollout.engine_kwargs) for i in range(cfg.rollout.num_actors)]
        self.reward = make(RewardWorker, "reward", 0, True, cfg.reward.model, pad_id, cfg.reward.micro_batch_size)
        self.reference = make(ReferenceWorker, "reference", 0, True, cfg.policy, cfg.reference.micro_batch_size)
        # Each learner role is its own DeepSpeed world with its own rendezvous.
        setups = []
        for ranks in (self.policy, self.critic):
            addr, port = ray.get(ranks[0].rendezvous_address.remote())
            setups += [rank.setup.remote(addr, port) for rank in ranks]
        ray.get(setups + [a.ready.remote() for a in self.rollout + [self.reward, self.reference]])
        # Every rank takes part: under ZeRO-3 reading the full state dict is a collective gather.
        self.layout = ray.get([rank.weight_layout.remote() for rank in self.policy])[0]

    def connect_weight_sync(self) -> None:
        """(Re)build the push group: policy rank 0 + every rollout actor, on a fresh port and tag."""
        import ray

        from fgrlhf.distributed import resolve_backend

        backend = resolve_backend(DeepSpeedConfig(backend=self.cfg.weight_sync.backend))
        addr, port = ray.get(self.policy[0].rendezvous_address.remote())
        world, tag = 1 + len(self.rollout), uuid.uuid4().hex
        ray.get([self.policy[0].join_weight_sync.remote(addr, port, world, backend, tag)]
                + [actor.join_weight_sync.remote(addr, port, i + 1, world, backend, tag)
                   for i, actor in enumerate(self.rollout)])

    def push_weights(self) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError

        mb = self.cfg.weight_sync.bucket_mb
        receives = [actor.receive_weights.remote(self.layout, mb) for actor in self.rollout]
        sends = [rank.push_weights.remote(mb) for rank in self.policy]
        errors = []
        for ref in receives + sends:
            try:
                ray.get(ref)
            except RayError as exc:
                errors.append(exc)
        # A dead rollout actor also breaks the sender's broadcast; report the root cause (the actor error,
        # which the driver recovers from) rather than the learner's "connection closed by peer".
        for exc in errors:
            if isinstance(exc, RayActorError):
                raise exc
        if errors:
            raise errors[0]

    def restartable(self) -> list:
        return self.rollout + [self.reward, self.reference]

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.policy + self.critic + self.restartable():
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)


# --- the loop ---------------------------------------------------------------------------------------------
def _latest_checkpoint(out_dir: Path) -> tuple[int, Path] | None:
    found = []
    for path in (out_dir / "checkpoints").glob("step_*"):
        if (path / "state.json").is_file():  # written last: its presence marks a complete checkpoint
            found.append((int(path.name.removeprefix("step_")), path))
    return max(found) if found else None


def _wait_alive(actors: list, timeout_s: float = 600.0) -> None:
    """Block until every actor answers (a restarting one refuses calls for a while); a dead one raises."""
    import ray
    from ray.exceptions import ActorUnavailableError

    deadline = time.monotonic() + timeout_s
    for actor in actors:
        while True:
            try:
                ray.get(actor.ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                break
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


def _pad_to(tensor, width: int):
    import torch.nn.functional as F

    return F.pad(tensor, (0, width - tensor.size(1)))


class PPOTrainer:
    def __init__(self, cfg: PPOTrainConfig, out_dir: str | Path, resume: bool = False):
        self.cfg, self.out_dir, self.resume = cfg, Path(out_dir), resume
        self.phase_seconds: dict[str, float] = {}
        self.actor_restarts = 0

    @contextmanager
    def _phase(self, name: str):
        start = time.perf_counter()
        yield
        self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + time.perf_counter() - start

    def _recovering(self, what: Callable, attempts: int | None = None):
        """Run ``what()``; if a restartable actor died, wait for Ray to restart it, re-push the weights to the
        rollout actors and run ``what()`` again (the step in flight is redone, nothing else is lost)."""
        from ray.exceptions import RayActorError

        from fgrlhf.workers.rollout_worker import WeightsNotSynced

        attempts = self.cfg.max_actor_restarts if attempts is None else attempts
        for attempt in range(attempts + 1):
            try:
                return what()
            except (RayActorError, WeightsNotSynced) as exc:  # restarted silently: calls queued, no error
                if attempt == attempts:
                    raise
                log.warning("an actor died (%s); waiting for its restart and redoing the phase",
                            str(exc).splitlines()[0])
                self.actor_restarts += 1
                _wait_alive(self.cluster.restartable())
                self._resync_weights()

    def _resync_weights(self) -> None:
        from ray.exceptions import RayError

        for attempt in range(self.cfg.max_actor_restarts + 1):
            try:
                self.cluster.connect_weight_sync()
                self.cluster.push_weights()
                return
            except RayError as exc:  # a rollout actor died again mid-push: the group is broken, rebuild
                if attempt == self.cfg.max_actor_restarts:
                    raise
                log.warning("weight push failed (%s); rebuilding the group", str(exc).splitlines()[0])
                _wait_alive(self.cluster.rollout)

    def _resolve_reward_model(self) -> None:
        """``reward.model: tiny-token|tiny-sequence`` builds a random tiny RM in DIR/tiny_rm (smoke runs)."""
        name = self.cfg.reward.model
        if name not in TINY_RMS:
            return
        path = self.out_dir / f"tiny_rm_{TINY_RMS[name]}"
        if not path.is_dir():
            save_tiny_reward_model(TINY_RMS[name], self.cfg.policy, path)
        self.cfg = self.cfg.model_copy(update={"reward": self.cfg.reward.model_copy(update={"model": str(path)})})

    def run(self) -> dict:
        import ray
        from tqdm import tqdm

        from fgrlhf.config import dump_config
        from fgrlhf.models import load_tokenizer

        self.out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(self.cfg, self.out_dir / "config.yaml")
        self._resolve_reward_model()
        cfg = self.cfg
        texts, prompt_ids = load_prompt_ids(cfg)
        tokenizer = load_tokenizer(cfg.policy.name)
        gold = load_gold(cfg.gold_reward)

        start_step = 0
        latest = _latest_checkpoint(self.out_dir) if self.resume else None
        if self.resume and latest is None:
            log.info("--resume: no complete checkpoint under %s, starting at step 0", self.out_dir)
        self.cluster = cluster = Cluster(cfg)
        try:
            if latest is not None:
                start_step, path = latest
                ray.get([r.load_checkpoint.remote(str(path / "policy"), "ds") for r in cluster.policy]
                        + [r.load_checkpoint.remote(str(path / "critic"), "ds") for r in cluster.critic])
                log.info("resumed from %s (step %d)", path, start_step)
            self._resync_weights()  # rollout actors start from the learner's (possibly resumed) weights
            sink = MetricsSink(self.out_dir, start_step)
            record: dict = {}
            bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="ppo", unit="step")
            for step in bar:
                record = self._step(step, texts, prompt_ids, tokenizer, gold)
                done = step + 1
                if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
                    record["phase_seconds"]["checkpoint"] = self._save_checkpoint(done)
                sink.write(record)
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl_mean']:.4f}")
            sink.close()
            final, partial = self.out_dir / "final", self.out_dir / "final.partial"
            shutil.rmtree(partial, ignore_errors=True)
            ray.get([r.save_hf.remote(str(partial)) for r in cluster.policy])
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)  # a crash mid-save never leaves a half-written final/
            return record
        finally:
            cluster.shutdown()

    def _step(self, step: int, texts: list[str], prompt_ids: list[list[int]], tokenizer, gold) -> dict:
        import ray
        import torch

        from fgrlhf.algorithms import ppo_core
        from fgrlhf.workers.packing import split

        cfg, ppo, cluster = self.cfg, self.cfg.ppo, self.cluster
        self.phase_seconds = {}
        step_start = time.perf_counter()
        indices = batch_indices(len(prompt_ids), ppo.rollout_batch_size, step, cfg.seed)
        prompts = [prompt_ids[i] for i in indices]

        def rollout():
            shards = split(prompts, len(cluster.rollout))
            futures = [actor.generate.remote(shard, cfg.rollout.max_new_tokens, cfg.rollout.temperature,
                                             cfg.rollout.top_p, cfg.seed * 1_000_003 + step * 101 + i)
                       for i, (actor, shard) in enumerate(zip(cluster.rollout, shards))]
            return [r for part in ray.get(futures) for r in part]

        with self._phase("rollout"):
            responses = self._recovering(rollout)

        def score():
            pol_shards = split(list(range(len(prompts))), len(cluster.policy))
            cri_shards = split(list(range(len(prompts))), len(cluster.critic))
            futures = [cluster.reward.score.remote(prompts, responses),
                       cluster.reference.logprobs.remote(prompts, responses)]
            futures += [r.evaluate.remote([prompts[i] for i in s], [responses[i] for i in s])
                        for r, s in zip(cluster.policy, pol_shards)]
            futures += [r.evaluate.remote([prompts[i] for i in s], [responses[i] for i in s])
                        for r, s in zip(cluster.critic, cri_shards)]
            return ray.get(futures)  # all scorers and learners run at once

        with self._phase("score"):
            results = self._recovering(score)
        rm, ref_logprobs = results[0], results[1]
        width = ref_logprobs.size(1)
        n_pol = len(cluster.policy)
        old_logprobs = torch.cat([_pad_to(t, width) for t in results[2:2 + n_pol]])
        old_values = torch.cat([_pad_to(t, width) for t in results[2 + n_pol:]])

        with self._phase("advantages"):
            mask = torch.zeros(len(responses), width)
            for row, r in enumerate(responses):
                mask[row, :len(r)] = 1.0
            kl = ppo_core.kl_penalty(old_logprobs, ref_logprobs, ppo.kl_estimator, clamp=ppo.kl_clamp) * mask
            if ppo.reward_mode == "token" and "token" not in rm:
                raise ValueError("ppo.reward_mode=token needs a TokenRewardModel as reward.model")
            token_rewards = None
            if ppo.reward_mode == "token":
                token_rewards = rm["token"]
                if ppo.center_token_rewards:
                    token_rewards = ppo_core.center_token_rewards(token_rewards, mask)
            rewards = ppo_core.compute_rewards(
                ppo.reward_mode, kl, mask, ppo.kl_coef,
                sequence_reward=rm["sequence"] if ppo.reward_mode != "token" else None, token_rewards=token_rewards)
            if ppo.whiten_rewards:
                rewards = ppo_core.masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = ppo_core.compute_gae(rewards, old_values, mask, ppo.gamma, ppo.lam)
            if ppo.whiten_advantages:
                advantages = ppo_core.masked_whiten(advantages, mask)
            advantages, returns = advantages * mask, returns * mask

        with self._phase("train"):
            def shard_args(ranks, tensors):
                idx = split(list(range(len(prompts))), len(ranks))
                return [([prompts[i] for i in s], [responses[i] for i in s], {k: v[s] for k, v in tensors.items()})
                        for s in idx]

            pol_mb = ppo.step_batch_size // len(cluster.policy)
            cri_mb = ppo.step_batch_size // len(cluster.critic)
            pol = [r.train.remote(*args, ppo.epochs, pol_mb, ppo.clip_eps, 1.0, ppo.entropy_coef, cfg.seed + step)
                   for r, args in zip(cluster.policy, shard_args(cluster.policy, {
                       "old_logprobs": old_logprobs, "advantages": advantages}))]
            cri = [r.train.remote(*args, ppo.epochs, cri_mb, ppo.value_clip_eps, ppo.vf_coef, 0.0, cfg.seed + step)
                   for r, args in zip(cluster.critic, shard_args(cluster.critic, {
                       "old_values": old_values, "returns": returns}))]
            pol_stats, cri_stats = ray.get(pol), ray.get(cri)

        with self._phase("weight_push"):
            self._recovering(cluster.push_weights)

        gold_mean = None
        if gold is not None:
            with self._phase("gold"):
                scores = gold([texts[i] for i in indices],
                              tokenizer.batch_decode(responses, skip_special_tokens=True))
                gold_mean = sum(scores) / len(scores)

        seconds = time.perf_counter() - step_start
        n_tokens = int(mask.sum())
        lengths = mask.sum(1)

        def mean_of(stats: list[dict], key: str) -> float:
            values = [s[key] for s in stats if key in s]
            return sum(values) / len(values) if values else float("nan")

        record = {
            "step": step + 1,
            "reward_mean": float(rm["sequence"].mean()),
            "reward_std": float(rm["sequence"].std()) if len(responses) > 1 else 0.0,
            "kl_mean": float(ppo_core.masked_mean(kl, mask)),
            "kl_seq_mean": float((kl * mask).sum(1).mean()),
            "entropy": mean_of(pol_stats, "entropy"),
            "clip_fraction": mean_of(pol_stats, "clip_fraction"),
            "approx_kl": mean_of(pol_stats, "approx_kl"),
            "policy_loss": mean_of(pol_stats, "policy_loss"),
            "value_loss": mean_of(cri_stats, "value_loss"),
            "lr": mean_of(pol_stats, "lr"),
            "response_len_mean": float(lengths.mean()),
            "advantage_mean": float(ppo_core.masked_mean(advantages, mask)),
            "return_mean": float(ppo_core.masked_mean(returns, mask)),
            "tokens_per_s": n_tokens / seconds,
            "rollout_tokens_per_s": n_tokens / self.phase_seconds["rollout"],
            "step_seconds": seconds,
            "actor_restarts": self.actor_restarts,
            "phase_seconds": dict(self.phase_seconds),
        }
        if "token" in rm:
            record["token_reward_mean"] = float(ppo_core.masked_mean(rm["token"], mask))
        if gold_mean is not None:
            record["gold_reward_mean"] = gold_mean
        return record

    def _save_checkpoint(self, step: int) -> float:
        """DeepSpeed checkpoints of both learners, then ``state.json`` (its presence marks completeness)."""
        import ray

        start = time.perf_counter()
        root = self.out_dir / "checkpoints"
        path = root / f"step_{step}"
        shutil.rmtree(path, ignore_errors=True)
        ray.get([r.save_checkpoint.remote(str(path / "policy"), "ds") for r in self.cluster.policy]
                + [r.save_checkpoint.remote(str(path / "critic"), "ds") for r in self.cluster.critic])
        state = {"step": step, "data_position": step * self.cfg.ppo.rollout_batch_size, "seed": self.cfg.seed}
        tmp = path / "state.json.tmp"
        tmp.write_text(json.dumps(state), encoding="utf-8")
        tmp.replace(path / "state.json")
        complete = sorted((int(p.name.removeprefix("step_")), p) for p in root.glob("step_*")
                          if (p / "state.json").is_file())
        for _, old in complete[:-self.cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return time.perf_counter() - start


def train(cfg: PPOTrainConfig, out_dir: str | Path, resume: bool = False) -> dict:
    """Run PPO (Ray must already be initialised); returns the last step's metrics."""
    return PPOTrainer(cfg, out_dir, resume).run()
