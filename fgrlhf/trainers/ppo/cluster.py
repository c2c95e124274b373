"""The PPO job's actors: one placement group (:func:`fgrlhf.runtime.placement.ppo_placement`, the plan `fgrlhf plan`
prints) holding the policy and critic learner groups (each its own DeepSpeed world), the rollout actors, the
reward and the reference actor; the weight-push group from policy rank 0 to the rollout actors; restarts.

A rollout, reward or reference actor that dies is restarted by Ray (``max_actor_restarts``);
:meth:`Cluster.recovering` waits for it, re-pushes the current weights to the rollout actors and redoes the
phase in flight.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from fgrlhf.runtime.actor_group import ActorGroup
from fgrlhf.trainers.ppo.config import PPOTrainConfig

log = logging.getLogger(__name__)


class Cluster:
    """Creates the actors in one placement group (``separate``: a bundle per actor; ``colocated``: actor i of
    every role shares bundle i, so e.g. rollout, reference and learner rank 0 split one GPU)."""

    # PPO updates the policy learners' weights have had (the trainer counts them): every push labels the
    # rollout actors' weights with it, so a batch knows the policy version that sampled it
    policy_version: int = 0

    def __init__(self, cfg: PPOTrainConfig):
        import ray

        from fgrlhf.models import load_tokenizer
        from fgrlhf.runtime.distributed import placement_group_for
        from fgrlhf.runtime.placement import ppo_placement
        from fgrlhf.workers.learner_worker import CriticLearner, PolicyLearner
        from fgrlhf.workers.reference_worker import ReferenceWorker
        from fgrlhf.workers.reward_worker import RewardWorker
        from fgrlhf.workers.rollout_worker import RolloutWorker

        self.cfg = cfg
        self.restarts = 0  # restarted actors seen by the driver
        pol, cri = cfg.learner_ds("policy_learner"), cfg.learner_ds("critic_learner")
        self.placement = plan = ppo_placement(cfg)  # the same plan `fgrlhf plan` prints
        pad_id = load_tokenizer(cfg.policy.name).pad_token_id
        critic_init = cfg.critic_init or cfg.reward.model
        self.group = placement_group_for(plan.bundles, plan.strategy)
        self.policy = self.critic = self.rollout = ActorGroup([])
        self.reward = self.reference = None
        try:

            def create(worker: type, role: str, args: Callable, restartable: bool = False) -> ActorGroup:
                return ActorGroup.create(
                    worker,
                    self.group,
                    [s for s in plan.slots if s.role == role],
                    args,
                    cfg.max_actor_restarts if restartable else 0,
                )

            self.policy = create(PolicyLearner, "policy", lambda s: (s.index, pol.world_size, pol, cfg.policy))
            self.critic = create(
                CriticLearner,
                "critic",
                lambda s: (s.index, cri.world_size, cri, cfg.policy, critic_init, cfg.critic_value_head_init),
            )
            self.rollout = create(
                RolloutWorker, "rollout", lambda s: (cfg.rollout.engine, cfg.policy, cfg.rollout.engine_kwargs), True
            )
            (self.reward,) = create(
                RewardWorker,
                "reward",
                lambda s: (cfg.reward.model, pad_id, cfg.reward.micro_batch_size, cfg.policy),
                True,
            )
            (self.reference,) = create(
                ReferenceWorker, "reference", lambda s: (cfg.policy, cfg.reference.micro_batch_size), True
            )
            # Each learner group is its own DeepSpeed world with its own rendezvous.
            ray.get(
                self.policy.rendezvous() + self.critic.rendezvous() + [a.ready.remote() for a in self.restartable()]
            )
            self.layout = ray.get(self.policy[0].weight_layout.remote())  # no gather, even under ZeRO-3
        except BaseException:
            self.shutdown()  # free the bundles: a caller sharing the Ray session must not inherit them
            raise

    def connect_weight_sync(self) -> str:
        """(Re)build the push group: policy rank 0 + every rollout actor, on a fresh port and tag.

        The backend comes from the members (each says whether its own process has a GPU), never from the
        driver, which may be a CPU-only head node. Returns it.
        """
        import ray

        from fgrlhf.runtime.weight_sync import choose_backend

        sync = self.cfg.weight_sync
        members = [self.policy[0], *self.rollout]
        backend = choose_backend(sync.backend, ray.get([m.sees_cuda.remote() for m in members]))
        log.info(
            "weight push: %s from policy learner rank 0 to %d rollout actor(s) (weight_sync.backend=%s, "
            "decided by the members' own GPUs)",
            backend,
            len(self.rollout),
            sync.backend,
        )
        addr, port = ray.get(self.policy[0].rendezvous_address.remote())
        world, tag = 1 + len(self.rollout), uuid.uuid4().hex
        ray.get(
            [self.policy[0].join_weight_sync.remote(addr, port, world, backend, tag, sync.timeout_s)]
            + [
                actor.join_weight_sync.remote(addr, port, i + 1, world, backend, tag, sync.timeout_s)
                for i, actor in enumerate(self.rollout)
            ]
        )
        return backend

    def push_weights(self) -> None:
        """One push. A rollout actor's death is re-raised as is (the driver restarts it and pushes again);
        any other failure (the sender died, a member stopped answering for ``weight_sync.timeout_s``) is a
        ``WeightPushError``: the run stops, its checkpoints intact, and ``--resume`` continues it."""
        import ray
        from ray.exceptions import RayActorError, RayError

        from fgrlhf.runtime.weight_sync import WeightPushError

        sync = self.cfg.weight_sync

        def failures(refs: list) -> list[RayError]:
            out = []
            for ref in refs:
                try:
                    ray.get(ref)
                except RayError as exc:
                    out.append(exc)
            return out

        receives = [
            actor.receive_weights.remote(self.layout, sync.bucket_mb, self.policy_version) for actor in self.rollout
        ]
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
        return [*self.rollout, *(a for a in (self.reward, self.reference) if a is not None)]

    def shutdown(self) -> None:
        from ray.util.placement_group import remove_placement_group

        ActorGroup([*self.policy, *self.critic, *self.restartable()]).shutdown()
        remove_placement_group(self.group)

    # --- restarts -----------------------------------------------------------------------------------------
    def recovering(self, what: Callable[[], Any]) -> Any:
        """Run ``what()``; if a restartable actor died, wait for Ray to restart it, re-push the weights to the
        rollout actors and run ``what()`` again (the phase in flight is redone, nothing else is lost)."""
        from ray.exceptions import RayActorError

        from fgrlhf.workers.rollout_worker import WeightsNotSynced

        attempts = self.cfg.max_actor_restarts
        for attempt in range(attempts + 1):
            try:
                return what()
            except (RayActorError, WeightsNotSynced) as exc:  # restarted silently: calls queued, no error
                if attempt == attempts:
                    raise
                log.warning(
                    "an actor died (%s); waiting for its restart and redoing the phase", str(exc).splitlines()[0]
                )
                self.restarts += 1
                wait_alive(self.restartable())
                self.resync_weights()

    def resync_weights(self) -> None:
        """Rebuild the push group and push the policy's weights to every rollout actor."""
        from ray.exceptions import RayError

        for attempt in range(self.cfg.max_actor_restarts + 1):
            try:
                self.connect_weight_sync()
                self.push_weights()
                return
            except RayError as exc:  # a rollout actor died again mid-push: the group is broken, rebuild
                if attempt == self.cfg.max_actor_restarts:
                    raise
                log.warning("weight push failed (%s); rebuilding the group", str(exc).splitlines()[0])
                wait_alive(list(self.rollout))


def wait_alive(actors: list, timeout_s: float = 600.0) -> None:
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
