"""Compatibility import: PPO now lives in the :mod:`fgrlhf.ppo` package (config, inputs, batch, cluster,
trainer, metrics). Scripts and notebooks written against ``fgrlhf.ppo_trainer`` keep working."""

from fgrlhf.ppo.cluster import Cluster
from fgrlhf.ppo.config import (
    PPO_RUN,
    TINY_RMS,
    PlacementConfig,
    PPOAlgoConfig,
    PPOTrainConfig,
    PromptsConfig,
    RewardConfig,
    RolloutConfig,
    ScorerConfig,
    StopAtGold,
    WeightSyncConfig,
    check_paths,
)
from fgrlhf.ppo.inputs import batch_indices, load_prompt_ids, prefix_gold_scores, save_tiny_reward_model
from fgrlhf.ppo.metrics import MetricsSink
from fgrlhf.ppo.trainer import PPOTrainer, gold_target_reached, train

__all__ = [
    "PPO_RUN",
    "TINY_RMS",
    "Cluster",
    "MetricsSink",
    "PPOAlgoConfig",
    "PPOTrainConfig",
    "PPOTrainer",
    "PlacementConfig",
    "PromptsConfig",
    "RewardConfig",
    "RolloutConfig",
    "ScorerConfig",
    "StopAtGold",
    "WeightSyncConfig",
    "batch_indices",
    "check_paths",
    "gold_target_reached",
    "load_prompt_ids",
    "prefix_gold_scores",
    "save_tiny_reward_model",
    "train",
]
