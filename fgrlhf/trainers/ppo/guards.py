"""What the PPO loop keeps across steps for its reward shaping and drift alarms (orchestration: the maths is in
:mod:`fgrlhf.algorithms.ppo_core` and :mod:`fgrlhf.algorithms.drift`).

:class:`ShapingState` holds the run's fixed task-reward scale, the current KL coefficient (adaptive KL) and
the length penalty's target; it goes into each checkpoint's ``state.json`` and comes back on --resume, so a
resumed run shapes its rewards exactly as the uninterrupted one. :class:`DriftMonitor` raises each drift
alarm once; it rebuilds its start values and raised kinds from ``metrics.jsonl`` on resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fgrlhf.trainers.ppo.config import DriftConfig, PPOAlgoConfig

log = logging.getLogger(__name__)


@dataclass
class ShapingState:
    """The run's reward-shaping state. ``reward_scale`` None: not measured yet (or ``ppo.reward_scale`` null,
    raw units); ``length_target`` None: no length penalty, or its target not measured yet."""

    kl_coef: float
    reward_scale: float | None = None
    length_target: float | None = None

    @classmethod
    def start(cls, ppo: PPOAlgoConfig, saved: dict[str, Any] | None = None) -> ShapingState:
        """The state at the start of a run, or the one ``saved`` by :meth:`to_state` in a checkpoint (a
        checkpoint written before these keys existed measures what it lacks anew)."""
        state = cls(
            kl_coef=ppo.kl_coef,
            reward_scale=ppo.reward_scale if isinstance(ppo.reward_scale, float) else None,
            length_target=ppo.length_penalty.target if ppo.length_penalty is not None else None,
        )
        saved = saved or {}
        if ppo.adaptive_kl is not None and "kl_coef" in saved:
            state.kl_coef = float(saved["kl_coef"])
        if ppo.reward_scale == "initial_std" and saved.get("reward_scale") is not None:
            state.reward_scale = float(saved["reward_scale"])
        if ppo.length_penalty is not None and saved.get("length_target") is not None:
            state.length_target = float(saved["length_target"])
        return state

    def to_state(self) -> dict[str, Any]:
        return {"kl_coef": self.kl_coef, "reward_scale": self.reward_scale, "length_target": self.length_target}

    def measure(self, ppo: PPOAlgoConfig, step: int, scale: float | None, mean_length: float) -> None:
        """Fix what the run measures on its first batch: ``scale`` (:func:`~fgrlhf.algorithms.ppo_core.return_scale`
        of this batch, None when its task returns are all equal: measured again next step) and the length
        penalty's target."""
        if ppo.reward_scale == "initial_std" and self.reward_scale is None:
            if scale is None:
                log.warning(
                    "step %d: every task return is equal, so no reward scale yet (raw units this step)", step + 1
                )
            else:
                self.reward_scale = scale
                log.info("step %d: task reward scale fixed at %.6g (std of the task return)", step + 1, scale)
        if ppo.length_penalty is not None and self.length_target is None and mean_length > 0:
            self.length_target = mean_length

    def update_kl_coef(self, ppo: PPOAlgoConfig, observed_kl: float, n_samples: int) -> None:
        """After a step: the adaptive controller's β for the next one (unchanged without ``ppo.adaptive_kl``)."""
        from fgrlhf.algorithms.ppo_core import adaptive_kl_coef

        if ppo.adaptive_kl is not None:
            self.kl_coef = adaptive_kl_coef(
                self.kl_coef, observed_kl, ppo.adaptive_kl.target, ppo.adaptive_kl.horizon, n_samples
            )


@dataclass
class DriftMonitor:
    """Checks each step's record against :class:`DriftConfig`; the first record of the run gives the start."""

    cfg: DriftConfig
    start: dict[str, Any] | None = None
    raised: set[str] = field(default_factory=set)

    @classmethod
    def resume(cls, cfg: DriftConfig, history: list[dict[str, Any]]) -> DriftMonitor:
        """The monitor after the records kept in ``metrics.jsonl`` (the run's first step is its start)."""
        raised = {alarm["kind"] for record in history for alarm in record.get("alarms", [])}
        return cls(cfg, history[0] if history else None, raised)

    def check(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        """The alarms ``record`` raises, as metrics.jsonl entries; each logged as one WARNING."""
        from fgrlhf.algorithms.drift import drift_alarms

        if self.start is None:
            self.start = record
        alarms = drift_alarms(
            record["step"],
            response_len=record["response_len_mean"],
            kl=record["kl_k1_seq_mean"],
            repetition=record["repetition_rate"],
            start_len=self.start["response_len_mean"],
            # a start record written before repetition_rate existed: the rise is counted from this step
            start_repetition=self.start.get("repetition_rate", record["repetition_rate"]),
            length_fraction=self.cfg.length_fraction,
            kl_max=self.cfg.kl_max,
            repetition_rise=self.cfg.repetition_rise,
            raised=self.raised,
        )
        for alarm in alarms:
            self.raised.add(alarm.kind)
            log.warning(
                "drift alarm at step %d: %s %.4g crossed %.4g%s",
                alarm.step,
                _DESCRIBE[alarm.kind],
                alarm.value,
                alarm.threshold,
                " (ppo.drift.stop: the run ends after this step)" if self.cfg.stop else "",
            )
        return [alarm.as_record() for alarm in alarms]


_DESCRIBE = {
    "length": "mean response length's change from the first step (fraction)",
    "kl": "KL to the reference per response (nats)",
    "repetition": "repetition rate's rise over the first step",
}
