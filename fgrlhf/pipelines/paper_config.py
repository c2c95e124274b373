"""The experiment config of ``fgrlhf paper`` (:mod:`fgrlhf.pipelines.paper`): data, editor, the RM and PPO
configs it runs (existing ones, by path), arms, seeds, checkpoint cadence, judge and the time-to-target rule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fgrlhf.config import StrictModel
from fgrlhf.data.loading import ALPACA_EVAL_SET
from fgrlhf.evaluation.judges import ClaudeJudgeConfig

Arm = Literal["sequence", "fine_grained_sequence", "token", "oracle_sequence", "oracle_token"]
# Which RM drives each arm; the oracle arms take the gold reward and use the sequence RM for the critic only.
ARM_RM = {
    "sequence": "sequence",
    "fine_grained_sequence": "token",
    "token": "token",
    "oracle_sequence": "sequence",
    "oracle_token": "sequence",
}


class SplitConfig(StrictModel):
    """AlpacaFarm's splits, by prompt (fgrlhf.data.splits): the preference data's prompts go to RM pairs,
    held-out pairs (Table 2) and, without ``ppo_prompts``, PPO prompts; the eval set's prompts to a validation
    split (checkpoint selection) and the reported eval split. Preference prompts that are also eval-set
    prompts are dropped first, so no prompt lies in two splits."""

    rm_pairs: float = Field(0.8, gt=0.0, le=1.0, description="fraction of the preference prompts for RM training")
    heldout_pairs: float = Field(0.1, gt=0.0, le=1.0, description="fraction held out for Table 2")
    ppo_prompts: float = Field(
        0.1, ge=0.0, le=1.0, description="fraction used as PPO prompts when ppo_prompts (a file) is not given"
    )
    validation: float = Field(0.5, gt=0.0, lt=1.0, description="fraction of the eval-set prompts for selection")
    max_pairs: int | None = Field(None, ge=2, description="first N preference records only (smoke profiles)")
    max_ppo_prompts: int | None = Field(None, ge=1)
    max_validation: int | None = Field(None, ge=1, description="validation prompts judged per checkpoint")
    max_eval: int | None = Field(None, ge=1, description="eval prompts judged for Table 1")
    seed: int = 0

    @model_validator(mode="after")
    def _sum(self) -> SplitConfig:
        total = self.rm_pairs + self.heldout_pairs + self.ppo_prompts
        if total > 1 + 1e-9:
            raise ValueError(f"rm_pairs + heldout_pairs + ppo_prompts = {total:g} exceeds 1")
        return self


class EditorConfig(StrictModel):
    """Who edits each less-preferred response: ``rule`` (regex rules), ``anthropic`` (Claude; ``batch``: the
    Message Batches API at half price), ``hf`` (a local model) or ``file`` (an existing ``fgrlhf edit`` output,
    split by prompt like the pairs)."""

    kind: Literal["rule", "anthropic", "hf", "file"] = "anthropic"
    batch: bool = Field(True, description="anthropic: Message Batches (half price, for thousands of pairs)")
    model: str | None = Field(None, description="anthropic/hf: the editor model (default: fgrlhf edit's)")
    rules: str | None = Field(None, description="rule: the rules YAML (default: fgrlhf edit's)")
    edits_file: str | None = Field(None, description="file: edit records made earlier")
    overrides: list[str] = Field(default_factory=list, description="fgrlhf edit key=value overrides")

    @model_validator(mode="after")
    def _consistent(self) -> EditorConfig:
        if self.kind == "file" and not self.edits_file:
            raise ValueError("editor.kind file needs editor.edits_file")
        if self.kind != "file" and self.edits_file:
            raise ValueError(f"editor.edits_file is only read with editor.kind file, not {self.kind}")
        return self


class RMStageConfig(StrictModel):
    """The two RMs of Table 2/3, from the existing train-rm configs; ``overrides`` apply to both."""

    sequence_config: str
    token_config: str
    overrides: list[str] = Field(default_factory=list)
    sequence_overrides: list[str] = Field(default_factory=list)
    token_overrides: list[str] = Field(default_factory=list)


class PPOStageConfig(StrictModel):
    """The PPO arms: one existing ppo config for all (same hyper-parameters and batch sizes), the arm's
    reward mode and RM set per arm. Every ``eval_every`` steps a checkpoint is saved and evaluated."""

    config: str
    overrides: list[str] = Field(default_factory=list)
    arms: list[Arm] = Field(default_factory=lambda: list[Arm](["sequence", "fine_grained_sequence", "token"]))
    seeds: list[int] = Field(default_factory=lambda: [0])
    steps: int = Field(40, ge=1, description="step budget of every arm")
    eval_every: int = Field(5, ge=1, description="K: checkpoint and evaluate every K steps")

    @model_validator(mode="after")
    def _arms(self) -> PPOStageConfig:
        if not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"ppo.arms must name each arm once, got {self.arms}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"ppo.seeds must be distinct, got {self.seeds}")
        return self


class EvalConfig(StrictModel):
    """Checkpoint evaluation: greedy answers on the validation/eval prompts, judged against the references."""

    judge: str = Field("claude", description="claude | gold (needs gold_env) | rm:PATH (an HF reward model)")
    max_new_tokens: int = Field(300, ge=1)
    max_prompt_tokens: int = Field(192, ge=1)
    batch_size: int = Field(8, ge=1)
    num_gpus: float = Field(
        0.0, ge=0.0, description="GPUs of the Ray task that generates and of the rm judge's (0: in the driver)"
    )
    num_cpus: float = Field(1.0, gt=0.0)
    epsilon: float = Field(0.01, ge=0.0, description="gold/rm judge: score differences within it are a draw")
    claude: ClaudeJudgeConfig = Field(default_factory=ClaudeJudgeConfig)

    @model_validator(mode="after")
    def _judge(self) -> EvalConfig:
        if self.judge not in ("claude", "gold") and not (self.judge.startswith("rm:") and len(self.judge) > 3):
            raise ValueError(f"eval.judge {self.judge!r}: choose claude, gold or rm:PATH")
        return self


class WandbConfig(StrictModel):
    """Weights & Biases, off by default (the ``wandb`` extra: ``pip install 'fgrlhf[wandb]'``): each stage's
    seconds as it finishes, and at the end Tables 1–3 and the curves. A resubmitted job continues the same
    W&B run (its id is kept in DIR/wandb_run_id)."""

    enabled: bool = False
    project: str = "fgrlhf-paper"
    entity: str | None = None
    name: str | None = Field(None, description="run name (default: W&B's)")


class TargetConfig(StrictModel):
    """Time to target, fixed before any comparison arm runs: the SFT policy's validation win rate plus
    ``delta`` points (win-rate percentage points)."""

    delta: float = Field(5.0, gt=0.0)


class EstimateConfig(StrictModel):
    """Assumptions of the dry run's estimates (printed with them): the cluster's GPUs, compute throughput per
    GPU, characters per Claude token, and the data's sizes where the data is not on the planning machine."""

    gpu_memory_gb: float | None = Field(None, gt=0.0, description="memory of one GPU (default: fgrlhf plan's)")
    gpus_per_node: int | None = Field(None, ge=1)

    gpu_tflops: float = Field(312.0, gt=0.0, description="peak bf16 TFLOP/s of one GPU (A100: 312)")
    mfu: float = Field(0.25, gt=0.0, le=1.0, description="fraction of peak reached (generation included)")
    chars_per_token: float = Field(4.0, gt=0.0)
    edit_thinking_tokens: int = Field(256, ge=0, description="Claude output tokens per edit beyond the response")
    judge_output_tokens: int = Field(64, ge=1, description="Claude output tokens per judge request")
    pairs: int | None = Field(None, ge=1, description="preference pairs assumed when the data is absent")
    ppo_prompts: int | None = Field(None, ge=1, description="PPO prompts assumed when the data is absent")
    prompt_chars: float = Field(300.0, gt=0.0, description="mean prompt length assumed when the data is absent")
    response_chars: float = Field(1000.0, gt=0.0, description="mean response length assumed when absent")


class PaperConfig(StrictModel):
    """One experiment of 2406.02756: ``fgrlhf paper --config C --out DIR``."""

    policy: str = Field(description="the SFT policy: HF directory or id (tiny/smollm2 for CPU profiles)")
    prompt_format: Literal["chat", "alpaca"] = "alpaca"
    architecture: str | None = Field(
        None, description="fgrlhf plan's --model-config: architecture of checkpoints not on this machine"
    )
    preference_data: str = Field(description="pairs: AlpacaFarm, TRL prompt/chosen/rejected or messages schema")
    ppo_prompts: str | None = Field(None, description="PPO prompts file (default: a split of the preference data)")
    eval_set: str = Field(ALPACA_EVAL_SET, description="prompts with reference outputs (AlpacaEval 805)")
    gold_env: Literal["alpaca-sim", "synthetic"] | None = Field(
        None, description="simulated gold: enables the oracle arms and the gold judge"
    )
    splits: SplitConfig = Field(default_factory=SplitConfig)
    editor: EditorConfig = Field(default_factory=EditorConfig)
    rm: RMStageConfig
    ppo: PPOStageConfig
    eval: EvalConfig = Field(default_factory=EvalConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)
    estimate: EstimateConfig = Field(default_factory=EstimateConfig)
    wandb: WandbConfig = Field(default_factory=WandbConfig)

    @model_validator(mode="after")
    def _gold(self) -> PaperConfig:
        oracle = [arm for arm in self.ppo.arms if arm.startswith("oracle_")]
        if oracle and self.gold_env is None:
            raise ValueError(f"ppo.arms {oracle} are driven by a gold reward: set gold_env or drop them")
        if self.eval.judge == "gold" and self.gold_env is None:
            raise ValueError("eval.judge gold needs gold_env (the simulated environment's gold reward)")
        return self

    @property
    def gold_hook(self) -> str | None:
        from fgrlhf.envs import ENVS

        return f"{ENVS[self.gold_env]}:gold_reward" if self.gold_env else None

    def uses_claude(self) -> tuple[bool, bool]:
        """(editor, judge) that send Claude requests."""
        return self.editor.kind == "anthropic", self.eval.judge == "claude"
