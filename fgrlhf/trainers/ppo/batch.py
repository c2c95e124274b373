"""The typed batch of one PPO step on the driver, filled phase by phase (rollout, gold, score, advantages).

B rows (``ppo.rollout_batch_size``), T = the longest response of the batch; per-token tensors are right-padded
``[B, T]`` and 0 where ``mask`` is 0. The token ids travel to the actors once, as object-store refs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from fgrlhf.algorithms.ppo_core import Advantages


@dataclass
class RolloutBatch:
    step: int  # 0-based
    indices: list[int]  # [B] rows of the run's prompts
    prompt_ids: list[list[int]]  # [B][prompt_len]
    response_ids: list[list[int]] | None = None  # [B][resp_len], EOS included when sampled (rollout)
    refs: tuple[Any, Any] | None = None  # ray.put(prompt_ids), ray.put(response_ids): shared by every scorer
    # role -> the row order its learner group takes (rank r: the r-th equal shard), fixed by _score for _train
    rank_orders: dict[str, list[int]] | None = None
    policy_version: int | None = None  # PPO updates of the weights that sampled it (the stalest rollout actor)
    generation_seconds: float | None = None  # the rollout actors' own generation time (the slowest actor)
    mask: torch.Tensor | None = None  # [B, T] float, 1 on real response tokens
    gold: list[float] | None = None  # [B] the gold reward of each response (gold_reward set)
    prefix_gold: torch.Tensor | None = None  # [B, T + 1] the gold of every prefix (oracle_token)
    ref_logprobs: torch.Tensor | None = None  # [B, T] log π_ref of the sampled tokens
    old_logprobs: torch.Tensor | None = None  # [B, T] log π_old (the policy that sampled; async: from the sampler)
    old_values: torch.Tensor | None = None  # [B, T] V_old(s_t)
    rm_sequence: torch.Tensor | None = None  # [B] the RM's sequence score (None in the oracle modes)
    rm_token: torch.Tensor | None = None  # [B, T] a token RM's per-token rewards
    result: Advantages | None = None  # kl, rewards, advantages, returns, each [B, T]

    @property
    def staleness(self) -> int:
        """Policy updates between the weights that sampled the batch and those trained on it: the learners have
        had ``step`` updates when they train on batch ``step`` (0 synchronous, 1 under async_rollout)."""
        assert self.policy_version is not None, "staleness of a batch not rolled out yet"
        return self.step - self.policy_version

    @property
    def sequence_reward(self) -> torch.Tensor:
        """``[B]`` the reward the policy is trained on, per response: the gold in the oracle modes, else the
        RM's sequence score."""
        import torch

        return self.rm_sequence if self.rm_sequence is not None else torch.tensor(self.gold)
