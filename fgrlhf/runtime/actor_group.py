"""A group of Ray actors of one worker class, e.g. the ranks of one DeepSpeed world (orchestration helper).

Used by the PPO cluster (policy ranks, critic ranks, rollout actors) and the supervised trainer (its ranks).
Each actor is scheduled into its :class:`fgrlhf.runtime.placement.Slot` of a placement group that the caller owns.
A group that forms a process group calls :meth:`ActorGroup.rendezvous`: rank 0 names a free address, then
every rank joins at once (``setup`` blocks until all have).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from fgrlhf.runtime.placement import Slot, actor_options

if TYPE_CHECKING:
    from ray.actor import ActorClass


class ActorGroup:
    def __init__(self, actors: list[Any]):
        self.actors = actors

    @classmethod
    def create(
        cls,
        worker: type,
        placement_group: Any,
        slots: Sequence[Slot],
        args: Callable[[Slot], tuple],
        max_restarts: int = 0,
    ) -> ActorGroup:
        """One actor of ``worker`` per slot, built with ``worker(*args(slot))``; ``max_restarts`` > 0 lets Ray
        restart a dead one (its callers then see ``RayActorError`` until it is back)."""
        import ray

        remote: ActorClass[Any] = ray.remote(worker)
        actors = []
        for slot in slots:
            options = actor_options(placement_group, slot)
            if max_restarts:
                options["max_restarts"] = max_restarts
            actors.append(remote.options(**options).remote(*args(slot)))
        return cls(actors)

    def __len__(self) -> int:
        return len(self.actors)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.actors)

    def __getitem__(self, index: int) -> Any:
        return self.actors[index]

    def submit(self, method: str, *args: Any) -> list[Any]:
        """Call ``method(*args)`` on every actor; the object refs, in rank order (nothing waited for)."""
        return [getattr(actor, method).remote(*args) for actor in self.actors]

    def submit_each(self, method: str, per_actor_args: Sequence[tuple]) -> list[Any]:
        """Call ``method`` on actor i with ``per_actor_args[i]``; the object refs, in rank order."""
        if len(per_actor_args) != len(self.actors):
            raise ValueError(f"{len(per_actor_args)} argument tuples for {len(self.actors)} actors")
        return [getattr(actor, method).remote(*args) for actor, args in zip(self.actors, per_actor_args, strict=True)]

    def all(self, method: str, *args: Any) -> list[Any]:
        import ray

        return ray.get(self.submit(method, *args))

    def each(self, method: str, per_actor_args: Sequence[tuple]) -> list[Any]:
        import ray

        return ray.get(self.submit_each(method, per_actor_args))

    def rendezvous(self, *args: Any) -> list[Any]:
        """The refs of ``setup(address, port, *args)`` on every rank, at the address rank 0 picked (each rank's
        ``setup`` joins the group, so they must all be in flight together)."""
        import ray

        address, port = ray.get(self.actors[0].rendezvous_address.remote())
        return self.submit("setup", address, port, *args)

    def shutdown(self, grace_s: float = 10.0) -> None:
        """Kill every actor for good (no restart), after letting those with a ``close`` method leave their
        process groups (a process killed or exiting with a live group can abort or leak its communicator); a
        rank stuck in a collective is not waited for longer than ``grace_s``."""
        import ray

        closing = [actor.close.remote() for actor in self.actors if hasattr(actor, "close")]
        if closing:
            ray.wait(closing, num_returns=len(closing), timeout=grace_s)
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
