"""PPO with token-level rewards, orchestrated over Ray actors (orchestration only: no model code here).

One step: prompts → rollout actors generate → in parallel, the RM scores, the reference model gives
log-probs and the policy/critic learners give old log-probs/values → rewards (KL shaping per
``ppo.reward_mode``), GAE and whitening on the driver → policy and critic PPO updates in parallel → the
policy's weights are pushed to the rollout actors. Metrics go to ``DIR/metrics.jsonl``, TensorBoard
(``DIR/tb``), the Ray dashboard (``ray.util.metrics``) and a tqdm bar; checkpoints to
``DIR/checkpoints/step_N`` (resumable); the final policy to ``DIR/final`` as an HF checkpoint. DIR is a run
directory of :mod:`fgrlhf.run_dir` (``PPO_RUN``: a used one needs --resume or --overwrite).

A rollout, reward or reference actor that dies is restarted by Ray (``max_restarts``); the driver waits for
it, re-pushes the current weights to rollout actors and redoes the phase in flight.
"""

from __future__ import annotations

import importlib
import logging
import random
import statistics
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from fgrlhf.config import DeepSpeedConfig, ModelConfig, StrictModel
from fgrlhf.data import ALPACA_EVAL_SET
from fgrlhf.run_dir import TRAINER_FILES, MetricsLog, RunDir, RunSpec, open_run

if TYPE_CHECKING:  # torch is imported inside functions so `fgrlhf --help` stays fast
    import torch

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
    """AlpacaFarm's defaults (docs/paper_facts.md) unless noted."""

    reward_mode: Literal["sequence", "token", "fine_grained_sequence", "oracle_sequence", "oracle_token"] = Field(
        "sequence", description="oracle_*: the env's gold_reward itself, at EOS or telescoped over prefixes")
    # The −β·KL_t shaping applies in every mode, token mode included (the paper's [R1..Rn] is β = 0).
    kl_coef: float = Field(0.0067, ge=0.0)
    kl_estimator: Literal["k1", "k2", "k3", "k1_nonneg"] = Field(
        "k1_nonneg", description="k1_nonneg = max(0, logπ − logπref), AlpacaFarm's reward shaping")
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
    whiten_rewards: bool = Field(
        True, description="divide rewards by their std over real tokens; no shift, so no length term")
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


class StopAtGold(StrictModel):
    """Early stop: after a step whose trailing ``window``-step mean of ``gold_reward_mean`` is ≥ ``target``."""

    target: float
    window: int = Field(1, ge=1)


class PPOTrainConfig(StrictModel):
    policy: ModelConfig = Field(default_factory=ModelConfig)
    reward: RewardConfig
    critic_init: str | None = Field(None, description="critic's initial weights; default: the RM (AlpacaFarm)")
    critic_value_head_init: Literal["zero", "reward_head"] = Field(
        "zero", description="zero: the RM's backbone with the value head at 0 (AlpacaFarm); reward_head: keep "
                            "the RM's head, so V(s_t) starts as the RM's score")
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
    stop_at_gold: StopAtGold | None = Field(
        None, description="end the run once the trailing mean of the rollouts' gold reaches a target")
    seed: int = 0

    @model_validator(mode="after")
    def _check_batches(self) -> PPOTrainConfig:
        ppo = self.ppo
        if self.gold_reward is None:
            if ppo.reward_mode.startswith("oracle_"):
                raise ValueError(f"ppo.reward_mode {ppo.reward_mode} is driven by the gold reward: set gold_reward")
            if self.stop_at_gold is not None:
                raise ValueError("stop_at_gold needs gold_reward")
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

    @model_validator(mode="after")
    def _check_weight_sync(self) -> PPOTrainConfig:
        """NCCL (weight_sync.backend nccl, or auto where every member has a GPU) refuses two ranks of the push
        group on one GPU. Ray packs fractional-GPU actors onto shared GPUs (colocated placement does so by
        design), so at most one member (policy learner rank 0, the rollout actors) may ask for a fraction."""
        sender, receiver = self.policy_learner.num_gpus_per_rank, self.rollout.num_gpus
        members = [sender] + [receiver] * self.rollout.num_actors
        if self.weight_sync.backend == "gloo":
            return self
        if not all(members):
            if self.weight_sync.backend == "nccl":
                raise ValueError(f"weight_sync.backend=nccl needs a GPU on policy learner rank 0 and on every "
                                 f"rollout actor (policy_learner.num_gpus_per_rank={sender:g}, rollout.num_gpus="
                                 f"{receiver:g}); use weight_sync.backend=gloo or auto")
            return self  # auto picks gloo: a member has no GPU
        if sum(0 < gpus < 1 for gpus in members) > 1:
            raise ValueError(
                f"weight push over NCCL with fractional GPUs (policy_learner.num_gpus_per_rank={sender:g}, "
                f"rollout.num_gpus={receiver:g} × {self.rollout.num_actors}, placement.mode="
                f"{self.placement.mode}): Ray may put two members of the push group on one GPU, which NCCL "
                "refuses. Give policy learner rank 0 and every rollout actor a GPU of its own (whole "
                "num_gpus), or set weight_sync.backend=gloo")
        return self

    def learner_ds(self, name: str) -> DeepSpeedConfig:
        """The learner's DeepSpeed config with gradient accumulation set so one optimizer step = one minibatch."""
        ds: DeepSpeedConfig = getattr(self, name)
        gas = self.ppo.step_batch_size // ds.world_size // ds.micro_batch_size
        return ds.model_copy(update={"gradient_accumulation_steps": gas})


# What --resume may change (fgrlhf.run_dir): run length and stopping, checkpointing, actor restarts, placement,
# weight transport and resources. Every other key (seed, reward mode, KL, batch sizes, models, rollout sampling,
# gold_reward, which the oracle modes train on, ...) changes what the run computes; prompts.path is compared by
# content.
PPO_RUN = RunSpec(
    "ppo",
    changeable=("steps", "stop_at_gold", "save_every", "keep_checkpoints", "max_actor_restarts", "placement",
                "weight_sync", "*.num_cpus", "*.num_gpus", "*.num_cpus_per_rank", "*.num_gpus_per_rank",
                "*_learner.backend"),
    extends=("steps", "stop_at_gold"),
    owned=(*TRAINER_FILES, "tiny_rm_*"),
    inputs=("prompts.path",),
)


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


def prefix_gold_scores(gold: Callable[[list[str], list[str]], list[float]], prompt_texts: list[str],
                       responses: list[list[int]], tokenizer) -> torch.Tensor:
    """The gold of every prefix of every response, ``[B, max_len + 1]`` (column t: the first t tokens,
    column 0 the empty response; 0 past a row's end), with one batch decode and one gold call.

    Prefixes are decoded from ids rather than by cutting the full text, because a token's text can depend
    on its neighbours (byte-level BPE, leading spaces); the decode costs O(Σ len²) tokens, small next to a
    rollout at these lengths.
    """
    import torch

    prefixes = [r[:t] for r in responses for t in range(len(r) + 1)]
    owners = [p for p, r in zip(prompt_texts, responses) for _ in range(len(r) + 1)]
    flat = gold(owners, tokenizer.batch_decode(prefixes, skip_special_tokens=True))
    if len(flat) != len(prefixes):
        raise ValueError(f"gold_reward returned {len(flat)} scores for {len(prefixes)} prefixes")
    out = torch.zeros(len(responses), max(len(r) for r in responses) + 1)
    start = 0
    for row, r in enumerate(responses):
        out[row, :len(r) + 1] = torch.tensor(flat[start:start + len(r) + 1], dtype=out.dtype)
        start += len(r) + 1
    return out


def load_gold(spec: str | None) -> Callable[[list[str], list[str]], list[float]] | None:
    if spec is None:
        return None
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(f"gold_reward {spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module_name), attr)


TINY_RMS = {"tiny-token": "token", "tiny-sequence": "sequence"}


def check_paths(cfg: PPOTrainConfig) -> None:
    """Models and prompts named by ``cfg`` exist (fgrlhf.preflight): run before Ray starts."""
    from fgrlhf.preflight import check_data, check_model, check_reward_model

    check_model(cfg.policy.name, "policy.name")
    check_reward_model(cfg.reward.model, "reward.model", also=tuple(TINY_RMS))
    if cfg.critic_init is not None:  # the critic is read from a reward-model directory (load_critic)
        check_reward_model(cfg.critic_init, "critic_init")
    check_data(cfg.prompts.path, "prompts.path")


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
class MetricsSink(MetricsLog):
    """metrics.jsonl + TensorBoard (:class:`fgrlhf.run_dir.MetricsLog`) + Ray dashboard gauges."""

    def __init__(self, root: Path, resume_step: int):
        super().__init__(root, resume_step)
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
        scalars = {f"ppo/{k}": v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        scalars.update({f"phase_seconds/{phase}": v for phase, v in record["phase_seconds"].items()})
        super().write(record, scalars)
        self._ray_metrics(record)


# --- actors -----------------------------------------------------------------------------------------------
class Cluster:
    """Creates the actors in one placement group (``separate``: a bundle per actor; ``colocated``: actor i of
    every role shares bundle i, so e.g. rollout, reference and learner rank 0 split one GPU)."""

    def __init__(self, cfg: PPOTrainConfig):
        import ray

        from fgrlhf.distributed import placement_group_for
        from fgrlhf.models import load_tokenizer
        from fgrlhf.placement import actor_options, ppo_placement
        from fgrlhf.workers.learner_worker import LearnerWorker
        from fgrlhf.workers.reference_worker import ReferenceWorker
        from fgrlhf.workers.reward_worker import RewardWorker
        from fgrlhf.workers.rollout_worker import RolloutWorker

        self.cfg = cfg
        pol, cri = cfg.learner_ds("policy_learner"), cfg.learner_ds("critic_learner")
        self.placement = plan = ppo_placement(cfg)  # the same plan `fgrlhf plan` prints
        self.group = placement_group_for(plan.bundles, plan.strategy)
        pad_id = load_tokenizer(cfg.policy.name).pad_token_id

        def make(cls, role, index, restartable, *args):
            opts = actor_options(self.group, plan.slot(role, index))
            if restartable:
                opts["max_restarts"] = cfg.max_actor_restarts
            return ray.remote(cls).options(**opts).remote(*args)

        self.policy = [make(LearnerWorker, "policy", i, False, "policy", i, pol.world_size, pol, cfg.policy)
                       for i in range(pol.world_size)]
        critic_init = cfg.critic_init or cfg.reward.model
        self.critic = [make(LearnerWorker, "critic", i, False, "critic", i, cri.world_size, cri, cfg.policy,
                            critic_init, cfg.critic_value_head_init) for i in range(cri.world_size)]
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
        self.layout = ray.get(self.policy[0].weight_layout.remote())  # no gather, even under ZeRO-3

    def connect_weight_sync(self) -> str:
        """(Re)build the push group: policy rank 0 + every rollout actor, on a fresh port and tag.

        The backend comes from the members (each says whether its own process has a GPU), never from the
        driver, which may be a CPU-only head node. Returns it.
        """
        import ray

        from fgrlhf.weight_sync import choose_backend

        sync = self.cfg.weight_sync
        members = [self.policy[0]] + self.rollout
        backend = choose_backend(sync.backend, ray.get([m.sees_cuda.remote() for m in members]))
        log.info("weight push: %s from policy learner rank 0 to %d rollout actor(s) (weight_sync.backend=%s, "
                 "decided by the members' own GPUs)", backend, len(self.rollout), sync.backend)
        addr, port = ray.get(self.policy[0].rendezvous_address.remote())
        world, tag = 1 + len(self.rollout), uuid.uuid4().hex
        ray.get([self.policy[0].join_weight_sync.remote(addr, port, world, backend, tag, sync.timeout_s)]
                + [actor.join_weight_sync.remote(addr, port, i + 1, world, backend, tag, sync.timeout_s)
                   for i, actor in enumerate(self.rollout)])
        return backend

    def push_weights(self) -> None:
        """One push. A rollout actor's death is re-raised as is (the driver restarts it and pushes again);
        any other failure (the sender died, a member stopped answering for ``weight_sync.timeout_s``) is a
        ``WeightPushError``: the run stops, its checkpoints intact, and ``--resume`` continues it."""
        import ray
        from ray.exceptions import RayActorError, RayError

        from fgrlhf.weight_sync import WeightPushError

        sync = self.cfg.weight_sync

        def failures(refs: list) -> list[RayError]:
            out = []
            for ref in refs:
                try:
                    ray.get(ref)
                except RayError as exc:
                    out.append(exc)
            return out

        receives = [actor.receive_weights.remote(self.layout, sync.bucket_mb) for actor in self.rollout]
        send_errors = failures([rank.push_weights.remote(sync.bucket_mb) for rank in self.policy])
        if send_errors:  # a stuck receiver would never answer: give the receivers one more timeout, no more
            receives, _ = ray.wait(receives, num_returns=len(receives), timeout=sync.timeout_s)
        receive_errors = failures(receives)
        # A dead rollout actor also breaks the sender's broadcast; report the root cause (the actor error,
        # which the driver recovers from) rather than the learner's "connection closed by peer".
        for exc in receive_errors:
            if isinstance(exc, RayActorError):
                raise exc
        if send_errors or receive_errors:
            cause = (send_errors + receive_errors)[0]
            raise WeightPushError(
                f"weight push to the rollout actors failed: {str(cause).strip().splitlines()[-1]} "
                f"(weight_sync.timeout_s={sync.timeout_s:g}). The run stops here; the checkpoints already "
                "written are intact: rerun the same command with --resume to continue from the last one"
            ) from cause

    def restartable(self) -> list:
        return self.rollout + [self.reward, self.reference]

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for actor in self.policy + self.critic + self.restartable():
            ray.kill(actor, no_restart=True)
        remove_placement_group(self.group)


# --- the loop ---------------------------------------------------------------------------------------------
def gold_target_reached(golds: list[float], stop: StopAtGold | None) -> bool:
    """Whether the mean of the last ``stop.window`` gold values is ≥ ``stop.target`` (never before a full
    window; never without ``stop``)."""
    return (stop is not None and len(golds) >= stop.window
            and statistics.fmean(golds[-stop.window:]) >= stop.target)


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
    def __init__(self, cfg: PPOTrainConfig, run: RunDir):
        """``run``: ``--out`` opened with ``open_run(path, PPO_RUN, cfg, ...)`` (see :func:`train`)."""
        self.cfg, self.rundir, self.out_dir = cfg, run, run.path
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

        from fgrlhf.models import load_tokenizer

        texts, prompt_ids = load_prompt_ids(self.cfg)
        gold = load_gold(self.cfg.gold_reward)
        self.rundir.start()  # after the inputs load: bad input loses nothing
        self._resolve_reward_model()
        cfg = self.cfg
        tokenizer = load_tokenizer(cfg.policy.name)

        start_step = 0
        latest = self.rundir.resume_checkpoint()
        if self.rundir.mode == "resume" and latest is None:
            log.info("--resume: no complete checkpoint under %s, starting at step 0", self.out_dir)
        self.cluster = cluster = Cluster(cfg)
        try:
            if latest is not None:
                start_step, path = latest.step, latest.path
                ray.get([r.load_checkpoint.remote(str(path / "policy"), "ds") for r in cluster.policy]
                        + [r.load_checkpoint.remote(str(path / "critic"), "ds") for r in cluster.critic])
                log.info("resumed from %s (step %d)", path, start_step)
            self._resync_weights()  # rollout actors start from the learner's (possibly resumed) weights
            sink = MetricsSink(self.out_dir, start_step)
            record: dict = {}
            golds = [r["gold_reward_mean"] for r in sink.history if "gold_reward_mean" in r]
            bar = tqdm(range(start_step, cfg.steps), initial=start_step, total=cfg.steps, desc="ppo", unit="step")
            for step in bar:
                if gold_target_reached(golds, cfg.stop_at_gold):  # also a resumed run that had stopped here
                    log.info("stop_at_gold: the trailing gold mean reached %s", cfg.stop_at_gold.target)
                    break
                record = self._step(step, texts, prompt_ids, tokenizer, gold)
                done = step + 1
                if cfg.stop_at_gold is not None:
                    golds.append(record["gold_reward_mean"])
                    record["stopped_at_gold"] = gold_target_reached(golds, cfg.stop_at_gold)
                if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps or record.get("stopped_at_gold"):
                    record["phase_seconds"]["checkpoint"] = self._save_checkpoint(done)
                sink.write(record)
                bar.set_postfix(reward=f"{record['reward_mean']:.3f}", kl=f"{record['kl_mean']:.4f}")
            bar.close()
            sink.close()
            with self.rundir.staging_final() as partial:  # a crash mid-save never leaves a half-written final/
                ray.get([r.save_hf.remote(str(partial)) for r in cluster.policy])
            self.rundir.finish(record)
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

        oracle = ppo.reward_mode.startswith("oracle_")
        gold_scores = prefix_scores = None
        if gold is not None:
            with self._phase("gold"):
                prompt_texts = [texts[i] for i in indices]
                if ppo.reward_mode == "oracle_token":
                    prefix_scores = prefix_gold_scores(gold, prompt_texts, responses, tokenizer)
                    # the full response is its own last prefix: the sequence gold comes for free
                    gold_scores = [float(prefix_scores[row, len(r)]) for row, r in enumerate(responses)]
                else:
                    gold_scores = gold(prompt_texts, tokenizer.batch_decode(responses, skip_special_tokens=True))

        def score():
            pol_shards = split(list(range(len(prompts))), len(cluster.policy))
            cri_shards = split(list(range(len(prompts))), len(cluster.critic))
            futures = [cluster.reference.logprobs.remote(prompts, responses)]
            futures += [r.evaluate.remote([prompts[i] for i in s], [responses[i] for i in s])
                        for r, s in zip(cluster.policy, pol_shards)]
            futures += [r.evaluate.remote([prompts[i] for i in s], [responses[i] for i in s])
                        for r, s in zip(cluster.critic, cri_shards)]
            if not oracle:  # the oracle modes' reward is the gold: the RM is not asked
                futures.append(cluster.reward.score.remote(prompts, responses))
            return ray.get(futures)  # all scorers and learners run at once

        with self._phase("score"):
            results = self._recovering(score)
        ref_logprobs = results[0]
        width = ref_logprobs.size(1)
        n_pol, n_cri = len(cluster.policy), len(cluster.critic)
        old_logprobs = torch.cat([_pad_to(t, width) for t in results[1:1 + n_pol]])
        old_values = torch.cat([_pad_to(t, width) for t in results[1 + n_pol:1 + n_pol + n_cri]])
        rm = None if oracle else results[-1]
        # The reward the policy is trained on, per response: the RM's sequence score, or the gold.
        sequence_reward = torch.tensor(gold_scores) if oracle else rm["sequence"]

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
            elif ppo.reward_mode == "oracle_token":  # never centred: its level is the gold's, Σ r_t = gold
                token_rewards = ppo_core.telescoped_rewards(_pad_to(prefix_scores, width + 1), mask)
            rewards = ppo_core.compute_rewards(
                ppo.reward_mode, kl, mask, ppo.kl_coef,
                sequence_reward=sequence_reward if ppo.reward_mode in ppo_core.SEQUENCE_MODES else None,
                token_rewards=token_rewards)
            if ppo.whiten_rewards:
                rewards = ppo_core.masked_rescale(rewards, mask)
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

        seconds = time.perf_counter() - step_start
        n_tokens = int(mask.sum())
        lengths = mask.sum(1)

        def mean_of(stats: list[dict], key: str) -> float:
            values = [s[key] for s in stats if key in s]
            return sum(values) / len(values) if values else float("nan")

        record = {
            "step": step + 1,
            "reward_mean": float(sequence_reward.mean()),
            "reward_std": float(sequence_reward.std()) if len(responses) > 1 else 0.0,
            "kl_mean": float(ppo_core.masked_mean(kl, mask)),
            "kl_seq_mean": float((kl * mask).sum(1).mean()),
            # Σ_t (logπ − logπref): the unbiased estimate of KL(π‖π_ref) per response, whatever the shaping
            "kl_k1_seq_mean": float(((old_logprobs - ref_logprobs) * mask).sum(1).mean()),
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
        if rm is not None and "token" in rm:
            record["token_reward_mean"] = float(ppo_core.masked_mean(rm["token"], mask))
        if gold_scores is not None:
            record["gold_reward_mean"] = statistics.fmean(gold_scores)
            record["gold_reward_std"] = statistics.stdev(gold_scores) if len(gold_scores) > 1 else 0.0
        return record

    def _save_checkpoint(self, step: int) -> float:
        """DeepSpeed checkpoints of both learners, then ``state.json`` (its presence marks completeness)."""
        import ray

        start = time.perf_counter()
        path = self.rundir.checkpoint_dir(step)
        ray.get([r.save_checkpoint.remote(str(path / "policy"), "ds") for r in self.cluster.policy]
                + [r.save_checkpoint.remote(str(path / "critic"), "ds") for r in self.cluster.critic])
        state = {"step": step, "data_position": step * self.cfg.ppo.rollout_batch_size, "seed": self.cfg.seed}
        self.rundir.commit_checkpoint(path, state, self.cfg.keep_checkpoints)
        return time.perf_counter() - start


def train(cfg: PPOTrainConfig, out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Run PPO into ``out_dir`` under the ``--out`` policy of :mod:`fgrlhf.run_dir` (Ray must already be
    initialised); returns the last step's metrics (a finished run's saved ones when it is not redone)."""
    run = open_run(out_dir, PPO_RUN, cfg, resume=resume, overwrite=overwrite)
    return run.result if run.done else PPOTrainer(cfg, run).run()
