"""Actors leave their process groups before they go (issue 20, item 10): ``ActorGroup.shutdown`` calls each
actor's ``close`` (the learners destroy their DeepSpeed group and abort the push group there), waits for it no
longer than its grace period, then kills the actors."""

import time
from pathlib import Path

import pytest

from fgrlhf.runtime.actor_group import ActorGroup

pytestmark = pytest.mark.slow


class Member:
    """Writes ``closed`` to its marker file when closed; ``hang`` keeps it busy (a rank stuck in a collective)."""

    def __init__(self, marker: str):
        self.marker = Path(marker)

    def ready(self) -> bool:
        return True

    def hang(self) -> None:
        time.sleep(600)

    def close(self) -> None:
        self.marker.write_text("closed")


class NoClose:
    def ready(self) -> bool:
        return True


def test_shutdown_closes_each_actor_then_kills_it_without_waiting_on_a_stuck_one(ray_session, tmp_path):
    ray = ray_session
    markers = [tmp_path / "a", tmp_path / "b"]
    actors = [ray.remote(Member).options(num_cpus=0.1).remote(str(m)) for m in markers]
    actors.append(ray.remote(NoClose).options(num_cpus=0.1).remote())  # reward/reference: nothing to close
    ray.get([a.ready.remote() for a in actors])
    stuck = actors[1].hang.remote()  # its close queues behind this call

    start = time.monotonic()
    ActorGroup(actors).shutdown(grace_s=3)
    assert time.monotonic() - start < 20
    assert markers[0].read_text() == "closed" and not markers[1].exists()
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(stuck, timeout=60)  # killed, not left running
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(actors[2].ready.remote(), timeout=60)


def test_a_learner_leaves_its_group_when_closed(ray_session):
    ray = ray_session
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.workers.learner_worker import PolicyLearner

    ds = DeepSpeedConfig(world_size=1, micro_batch_size=1, num_cpus_per_rank=0.25)
    learner = ray.remote(PolicyLearner).options(num_cpus=0.25).remote(0, 1, ds, ModelConfig(seed=0))
    try:
        ray.get(learner.setup.remote(*ray.get(learner.rendezvous_address.remote())))

        def in_group(worker) -> bool:
            import torch.distributed as dist

            return dist.is_initialized()

        assert ray.get(learner.__ray_call__.remote(in_group))
        ray.get(learner.close.remote())
        assert not ray.get(learner.__ray_call__.remote(in_group))
    finally:
        ray.kill(learner)
