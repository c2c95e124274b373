"""The ``fgrlhf ppo`` config (YAML + ``key=value`` overrides, :func:`fgrlhf.config.load_config`), the run
directory's :class:`~fgrlhf.runtime.run_dir.RunSpec` and the path checks run before Ray starts."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveFloat, field_validator, model_validator

from fgrlhf.config import DeepSpeedConfig, ModelConfig, StrictModel
from fgrlhf.data.loading import ALPACA_EVAL_SET
from fgrlhf.runtime.run_dir import TRAINER_FILES, RunSpec


class PromptsConfig(StrictModel):
    path: str = Field(ALPACA_EVAL_SET, description="prompts: any schema of docs/data.md, a file, dir or hf:REPO")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    max_prompt_tokens: int = Field(192, ge=1, description="longer prompts keep their end")
    field_map: dict[str, str] = Field(
        default_factory=dict, description="rename another schema's fields, e.g. {prompt: question} (docs/data.md)"
    )

    @field_validator("field_map")
    @classmethod
    def _mappable(cls, value: dict[str, str]) -> dict[str, str]:
        from fgrlhf.data.schemas import check_field_map

        return check_field_map(value, "prompts.field_map")


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


class AdaptiveKL(StrictModel):
    """The adaptive KL controller (arXiv:1909.08593): β is moved each step toward a KL target."""

    target: float = Field(..., gt=0.0, description="KL per response (nats, the shaping estimator's sum) to hold")
    horizon: int = Field(10000, ge=1, description="responses over which β moves by at most ±20 %·n/horizon a step")


class LengthPenalty(StrictModel):
    """coef·|L − L*| / L* subtracted from the task reward at the last token (in units of the reward scale)."""

    coef: float = Field(..., gt=0.0)
    target: float | None = Field(None, gt=0.0, description="L* in tokens; None = the first step's mean length")


class DriftConfig(StrictModel):
    """Alarms on the step record (fgrlhf.algorithms.drift): each kind is flagged once, at the step it trips, as
    a WARNING and in metrics.jsonl's ``alarms``. A threshold of null turns that alarm off."""

    length_fraction: float | None = Field(
        0.5, gt=0.0, description="|mean response length / the first step's − 1| above this"
    )
    kl_max: float | None = Field(10.0, gt=0.0, description="kl_k1_seq_mean (nats per response) above this")
    repetition_rise: float | None = Field(
        0.1, gt=0.0, le=1.0, description="repetition rate minus the first step's above this"
    )
    ngram: int = Field(3, ge=1, description="n of the repetition rate (repeated token n-grams within a response)")
    stop: bool = Field(False, description="end the run after a step that raised an alarm (final checkpoint)")


class PPOAlgoConfig(StrictModel):
    """AlpacaFarm's defaults (docs/paper_facts.md) unless noted."""

    reward_mode: Literal["sequence", "token", "fine_grained_sequence", "oracle_sequence", "oracle_token"] = Field(
        "sequence", description="oracle_*: the env's gold_reward itself, at EOS or telescoped over prefixes"
    )
    # The −β·KL_t shaping applies in every mode, token mode included (the paper's [R1..Rn] is β = 0).
    kl_coef: float = Field(0.0067, ge=0.0)
    kl_estimator: Literal["k1", "k2", "k3", "k1_nonneg"] = Field(
        "k1_nonneg", description="k1_nonneg = max(0, logπ − logπref), AlpacaFarm's reward shaping"
    )
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
        True, description="divide rewards by their std over real tokens; no shift, so no length term"
    )
    center_token_rewards: bool = Field(
        True, description="token mode: subtract the batch mean token reward (Eq. 3 leaves its level arbitrary)"
    )
    whiten_advantages: bool = True
    reward_scale: Literal["initial_std"] | PositiveFloat | None = Field(
        "initial_std",
        description="divide the task reward by a scale fixed for the run before −β·KL is added, so β weighs "
        "the same in every arm and for every RM: initial_std = the std of the task return over the first "
        "step's rollouts (kept in checkpoints), a number = that scale, null = off (raw RM/gold units)",
    )
    reward_clip: PositiveFloat | None = Field(
        None, description="clip the scaled task reward (R, or each token's R_t) to ±this; None = off"
    )
    no_eos_penalty: PositiveFloat | None = Field(
        None, description="subtract this from the scaled reward of a response cut off without EOS; None = off"
    )
    length_penalty: LengthPenalty | None = None
    adaptive_kl: AdaptiveKL | None = Field(None, description="None = β stays kl_coef")
    drift: DriftConfig = Field(default_factory=DriftConfig)
    async_rollout: bool = Field(
        False,
        description="generate batch k+1 while the learners train on batch k (one step off-policy: the PPO "
        "ratio uses the sampling policy's log-probs; metrics.jsonl reports rollout_staleness)",
    )
    reuse_rollout_logprobs: bool = Field(
        True,
        description="the HF rollout engine records the sampled tokens' log-probs (raw logits, as the learners "
        "define them) while generating, and the policy learners take them as the old log-probs instead of a "
        "forward of their own (async_rollout: instead of the rollout actor's teacher-forced forward). Used only "
        "where they equal the learners' to float tolerance: rollout.engine hf and float32 arithmetic on both "
        "sides (policy.dtype float32, policy.autocast none, policy_learner.bf16 false); elsewhere recomputed",
    )

    @model_validator(mode="after")
    def _check_adaptive_kl(self) -> PPOAlgoConfig:
        if self.adaptive_kl is not None and self.kl_coef == 0:
            raise ValueError("ppo.adaptive_kl multiplies ppo.kl_coef, which is 0: set an initial kl_coef > 0")
        return self


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
        "zero",
        description="zero: the RM's backbone with the value head at 0 (AlpacaFarm); reward_head: keep "
        "the RM's head, so V(s_t) starts as the RM's score",
    )
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
        None, description="end the run once the trailing mean of the rollouts' gold reaches a target"
    )
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
            raise ValueError(
                f"ppo.rollout_batch_size {ppo.rollout_batch_size} must be a multiple of "
                f"ppo.step_batch_size {ppo.step_batch_size}"
            )
        if ppo.rollout_batch_size % self.rollout.num_actors:
            raise ValueError("ppo.rollout_batch_size must be a multiple of rollout.num_actors")
        for name in ("policy_learner", "critic_learner"):
            ds: DeepSpeedConfig = getattr(self, name)
            per_rank = ppo.step_batch_size // ds.world_size
            if ppo.step_batch_size % ds.world_size or per_rank % ds.micro_batch_size:
                raise ValueError(
                    f"ppo.step_batch_size {ppo.step_batch_size} must split into {name}.world_size "
                    f"{ds.world_size} ranks × a multiple of {name}.micro_batch_size "
                    f"{ds.micro_batch_size}"
                )
        return self

    @model_validator(mode="after")
    def _check_autocast(self) -> PPOTrainConfig:
        for name in ("policy_learner", "critic_learner"):
            if self.policy.autocast == "bf16" and getattr(self, name).bf16:
                raise ValueError(
                    f"policy.autocast=bf16 keeps float32 weights, {name}.bf16=true casts them to bf16: choose one"
                )
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
                raise ValueError(
                    f"weight_sync.backend=nccl needs a GPU on policy learner rank 0 and on every "
                    f"rollout actor (policy_learner.num_gpus_per_rank={sender:g}, rollout.num_gpus="
                    f"{receiver:g}); use weight_sync.backend=gloo or auto"
                )
            return self  # auto picks gloo: a member has no GPU
        if sum(0 < gpus < 1 for gpus in members) > 1:
            raise ValueError(
                f"weight push over NCCL with fractional GPUs (policy_learner.num_gpus_per_rank={sender:g}, "
                f"rollout.num_gpus={receiver:g} × {self.rollout.num_actors}, placement.mode="
                f"{self.placement.mode}): Ray may put two members of the push group on one GPU, which NCCL "
                "refuses. Give policy learner rank 0 and every rollout actor a GPU of its own (whole "
                "num_gpus), or set weight_sync.backend=gloo"
            )
        return self

    @property
    def reuses_rollout_logprobs(self) -> bool:
        """Whether the rollout's recorded log-probs stand in for the policy learners' old log-probs: asked for
        (``ppo.reuse_rollout_logprobs``) and exact. Generation and the teacher-forced forward differ in shape
        and padding (left-padded with a KV cache vs one right-padded pass), which float32 absorbs (tested
        below 1e-4) but bf16 does not; vLLM computes its own log-probs in its own kernels."""
        return (
            self.ppo.reuse_rollout_logprobs
            and self.rollout.engine == "hf"
            and self.policy.dtype == "float32"
            and self.policy.autocast == "none"
            and not self.policy_learner.bf16
        )

    def learner_ds(self, name: str) -> DeepSpeedConfig:
        """The learner's DeepSpeed config with gradient accumulation set so one optimizer step = one minibatch."""
        ds: DeepSpeedConfig = getattr(self, name)
        gas = self.ppo.step_batch_size // ds.world_size // ds.micro_batch_size
        return ds.model_copy(update={"gradient_accumulation_steps": gas})


# What --resume may change (fgrlhf.runtime.run_dir): run length and stopping, checkpointing, actor restarts, placement,
# weight transport and resources, and the drift alarms (they watch the run, not change it). Every other key (seed,
# reward mode, KL and reward shaping, batch sizes, models, rollout sampling, gold_reward, which the oracle modes
# train on, ...) changes what the run computes; prompts.path is compared by content.
PPO_RUN = RunSpec(
    "ppo",
    changeable=(
        "steps",
        "stop_at_gold",
        "save_every",
        "keep_checkpoints",
        "max_actor_restarts",
        "placement",
        "weight_sync",
        "*.num_cpus",
        "*.num_gpus",
        "*.num_cpus_per_rank",
        "*.num_gpus_per_rank",
        "*_learner.backend",
        "*_learner.timeout_s",
        "ppo.drift",
    ),
    extends=("steps", "stop_at_gold"),
    owned=(*TRAINER_FILES, "tiny_rm_*"),
    inputs=("prompts.path",),
)


# reward.model names that build a random tiny RM in the run directory (smoke runs)
TINY_RMS = {"tiny-token": "token", "tiny-sequence": "sequence"}


def check_paths(cfg: PPOTrainConfig) -> None:
    """Models and prompts named by ``cfg`` exist (fgrlhf.runtime.preflight): run before Ray starts."""
    from fgrlhf.runtime.preflight import check_data, check_model, check_reward_model

    check_model(cfg.policy.name, "policy.name")
    check_reward_model(cfg.reward.model, "reward.model", also=tuple(TINY_RMS))
    if cfg.critic_init is not None:  # the critic is read from a reward-model directory (load_critic)
        check_reward_model(cfg.critic_init, "critic_init")
    check_data(cfg.prompts.path, "prompts.path")
