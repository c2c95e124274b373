"""The ``fgrlhf figa`` config (the supervised loop's settings plus model, pairs, FIGA weights and evaluation)
and the ``fgrlhf figa-data`` config (rollouts, RM filter, editor).

Kept apart from :mod:`fgrlhf.figa.train` and :mod:`fgrlhf.figa.collect` so that the CLI's ``--help`` does not
import their heavy libraries.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from fgrlhf.config import ModelConfig, StrictModel
from fgrlhf.data.loading import ALPACA_EVAL_SET
from fgrlhf.editing.config import EditConfig
from fgrlhf.evaluation.policy_eval import PolicyEvalConfig
from fgrlhf.figa.data import FigaDataConfig
from fgrlhf.figa.task import FigaLossConfig
from fgrlhf.generation import GenerationSettings
from fgrlhf.runtime.run_dir import TRAINER_FILES, RunSpec
from fgrlhf.trainers.supervised import STATE_FILE, SUPERVISED_CHANGEABLE, SUPERVISED_EXTENDS, SupervisedConfig


class FigaTrainConfig(SupervisedConfig):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: FigaDataConfig
    figa: FigaLossConfig = Field(default_factory=FigaLossConfig)
    eval: PolicyEvalConfig | None = Field(None, description="gold-reward evaluation after training")
    method: str = Field("figa", description="the run's name in eval.json's summary rows (figa, sft, ...)")


# The evaluation is part of the run's result, so eval.* may not change on --resume; the pairs file is compared
# by content.
FIGA_RUN = RunSpec(
    "figa",
    SUPERVISED_CHANGEABLE,
    SUPERVISED_EXTENDS,
    owned=(*TRAINER_FILES, "eval.json"),
    inputs=("data.edits_path",),
    state_file=STATE_FILE,
)


class PromptSourceConfig(StrictModel):
    source: str = Field(
        ALPACA_EVAL_SET,
        description="prompts JSONL/JSON/datasets with a 'prompt' field; "
        "default: the alpaca-sim (AlpacaEval) instructions",
    )
    heldout_fraction: float | None = Field(
        0.2,
        gt=0.0,
        lt=1.0,
        description="prompts in this hash split (fgrlhf.envs.in_eval_split, the gold evaluation's) are never "
        "rolled out; None = use every prompt",
    )
    shuffle_seed: int | None = Field(0, description="shuffle before `limit` (None = file order)")
    limit: int | None = Field(None, ge=1, description="first N prompts (after the split and the shuffle)")


class RMFilterConfig(StrictModel):
    """FIGA's selection of responses worth revising: keep those whose RM score lies in [low, high]."""

    rm: str | None = Field(None, description="reward-model directory (`fgrlhf train-rm`); None = no filter")
    low: float | None = Field(None, description="drop responses scoring below this")
    high: float | None = Field(None, description="drop responses scoring above this")
    max_prompt_tokens: int = Field(256, ge=1)
    max_response_tokens: int = Field(512, ge=2)
    micro_batch_size: int = Field(8, ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> RMFilterConfig:
        if self.rm is None and (self.low is not None or self.high is not None):
            raise ValueError("filter.low/filter.high need filter.rm (the reward model that scores)")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"filter.low ({self.low}) must not exceed filter.high ({self.high})")
        return self


class FigaCollectConfig(StrictModel):
    """``fgrlhf figa-data``: prompts → the policy's rollouts → RM score band → editor → FIGA edit records."""

    model: ModelConfig = Field(default_factory=ModelConfig, description="the policy being aligned")
    prompts: PromptSourceConfig = Field(default_factory=PromptSourceConfig)
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    save_every: int = Field(8, ge=1, description="generate batches between saves of rollouts.jsonl (resume)")
    filter: RMFilterConfig = Field(default_factory=RMFilterConfig)
    edit: EditConfig = Field(
        default_factory=EditConfig, description="the `fgrlhf edit` settings; its tokenizer defaults to the policy's"
    )


# --resume may extend the prompts, move the RM score band (nothing is regenerated or rescored) and change how
# edits are sent; the policy, prompts source, generation, scoring RM and editor are the run's meaning. A
# finished run is re-run: its stages skip what is done and failed edits are retried.
FIGA_DATA_RUN = RunSpec(
    "figa-data",
    changeable=(
        "prompts.limit",
        "save_every",
        "filter.low",
        "filter.high",
        "filter.micro_batch_size",
        "edit.concurrency",
        "edit.cache",
        "edit.limit",
        "edit.retry",
        "edit.anthropic.timeout_s",
        "edit.anthropic.*_usd_per_mtok",
    ),
    rerun_finished=True,
    # stages.json: written by versions before run.json, whose checks the config comparison replaced
    owned=("rollouts.jsonl*", "scored.jsonl*", "selected.jsonl*", "edits.jsonl*", "summary.json*", "stages.json"),
    inputs=("prompts.source",),
)
