"""A PPO step's metrics (one ``metrics.jsonl`` record, computed from the step's batch) and where they go."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgrlhf.runtime.run_dir import MetricsLog
from fgrlhf.trainers.ppo.batch import RolloutBatch

if TYPE_CHECKING:
    from ray.util.metrics import Histogram

    from fgrlhf.trainers.ppo.cluster import Cluster

GPU_PREFIX = "gpu/"  # per-actor device stats (fgrlhf.runtime.device_stats): their own tagged gauges


def _mean_of(stats: list[dict], key: str) -> float:
    values = [s[key] for s in stats if key in s]
    return sum(values) / len(values) if values else float("nan")


def step_metrics(
    batch: RolloutBatch,
    policy_stats: list[dict],
    critic_stats: list[dict],
    phase_seconds: dict[str, float],
    seconds: float,
    actor_restarts: int,
    rollout_seconds: float,
    *,
    kl_coef: float,
    reward_scale: float | None,
    repetition_ngram: int,
) -> dict:
    """The record of a finished step: rewards, KL, the learners' per-rank stats (averaged), lengths, repetition,
    speed, and the shaping the step used. ``rollout_seconds``: the generation time that
    ``rollout_tokens_per_s`` divides by; ``kl_coef``: β this step; ``reward_scale``: what the task reward was
    divided by (None: raw units); ``repetition_ngram``: n of ``repetition_rate``."""
    from fgrlhf.algorithms import ppo_core
    from fgrlhf.algorithms.drift import repetition_rate

    mask, result = batch.mask, batch.result
    # a finished step's batch has every phase filled in
    assert mask is not None and result is not None
    assert batch.old_logprobs is not None and batch.ref_logprobs is not None and batch.response_ids is not None
    reward = batch.sequence_reward
    n_tokens = int(mask.sum())
    record = {
        "step": batch.step + 1,
        "reward_mean": float(reward.mean()),
        "reward_std": float(reward.std()) if len(reward) > 1 else 0.0,
        "kl_mean": float(ppo_core.masked_mean(result.kl, mask)),
        "kl_seq_mean": float((result.kl * mask).sum(1).mean()),
        # Σ_t (logπ − logπref): the unbiased estimate of KL(π‖π_ref) per response, whatever the shaping
        "kl_k1_seq_mean": float(((batch.old_logprobs - batch.ref_logprobs) * mask).sum(1).mean()),
        "entropy": _mean_of(policy_stats, "entropy"),
        "clip_fraction": _mean_of(policy_stats, "clip_fraction"),
        "approx_kl": _mean_of(policy_stats, "approx_kl"),
        "policy_loss": _mean_of(policy_stats, "policy_loss"),
        "value_loss": _mean_of(critic_stats, "value_loss"),
        "lr": _mean_of(policy_stats, "lr"),
        "response_len_mean": float(mask.sum(1).mean()),
        "repetition_rate": repetition_rate(batch.response_ids, repetition_ngram),
        "kl_coef": kl_coef,
        "reward_scale": reward_scale,
        "advantage_mean": float(ppo_core.masked_mean(result.advantages, mask)),
        "return_mean": float(ppo_core.masked_mean(result.returns, mask)),
        "tokens_per_s": n_tokens / seconds,
        "rollout_tokens_per_s": n_tokens / rollout_seconds,
        "step_seconds": seconds,
        "actor_restarts": actor_restarts,
        "rollout_staleness": batch.staleness,
        "phase_seconds": dict(phase_seconds),
    }
    if batch.rm_token is not None:
        record["token_reward_mean"] = float(ppo_core.masked_mean(batch.rm_token, mask))
    if batch.gold is not None:
        record["gold_reward_mean"] = statistics.fmean(batch.gold)
        record["gold_reward_std"] = statistics.stdev(batch.gold) if len(batch.gold) > 1 else 0.0
    return record


def gpu_actors(cluster: Cluster) -> dict[tuple[str, int], Any]:
    """The actors that the placement plan gives a GPU share, by (role, rank): the ones asked for device stats
    each step. Empty on a CPU-only run, which then makes no Ray call for them."""
    groups: dict[str, list] = {
        "policy": list(cluster.policy),
        "critic": list(cluster.critic),
        "rollout": list(cluster.rollout),
        "reward": [cluster.reward],
        "reference": [cluster.reference],
    }
    return {(slot.role, slot.index): groups[slot.role][slot.index] for slot in cluster.placement.slots if slot.gpus > 0}


class MetricsSink(MetricsLog):
    """metrics.jsonl + TensorBoard (:class:`fgrlhf.runtime.run_dir.MetricsLog`) + Ray dashboard gauges."""

    def __init__(self, root: Path, resume_step: int):
        super().__init__(root, resume_step)
        self.gauges: dict = {}
        self.phase_hist: Histogram | None = None

    def _ray_metrics(self, record: dict) -> None:
        from ray.util import metrics

        if self.phase_hist is None:
            self.phase_hist = metrics.Histogram(
                "fgrlhf_ppo_phase_seconds",
                description="seconds per PPO phase",
                boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300],
                tag_keys=("phase",),
            )
        for key, value in record.items():
            if isinstance(value, (int, float)) and not key.startswith(GPU_PREFIX):
                if key not in self.gauges:
                    self.gauges[key] = metrics.Gauge(f"fgrlhf_ppo_{key}", description=f"PPO {key}")
                self.gauges[key].set(float(value))
        for phase, seconds in record["phase_seconds"].items():
            self.phase_hist.observe(seconds, tags={"phase": phase})

    def write_step(self, record: dict[str, Any]) -> None:
        """Write one step's record to every sink (its scalars: the record's numbers, phase seconds and the
        ``gpu/`` keys under their own name)."""
        scalars = {
            k if k.startswith(GPU_PREFIX) else f"ppo/{k}": v
            for k, v in record.items()
            if isinstance(v, (int, float)) and k != "step"
        }
        scalars.update({f"phase_seconds/{phase}": v for phase, v in record["phase_seconds"].items()})
        super().write(record, scalars)
        self._ray_metrics(record)
