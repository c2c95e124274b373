"""Where every actor of a job goes: placement-group bundles and each (role, index)'s bundle, as pure data.

The PPO ``Cluster`` reserves exactly these bundles and schedules each actor into its slot, and ``fgrlhf plan``
reads the same plan to say which GPU each role lands on, so the plan and the run cannot disagree.

``separate``: a bundle per actor. ``colocated``: actor i of every role shares bundle i (e.g. rollout,
reference and learner rank 0 split one GPU). GPUs within the cluster are modelled as Ray assigns them: a
bundle asking for whole GPUs takes fresh ones, and a fractional bundle goes to the fullest GPU it still fits
on (Ray's best fit for fractional GPU requests), so two 0.5-GPU bundles share one device. Inside a bundle Ray
hands each actor devices of its own the same way (:func:`slot_devices`): a colocated bundle of 4 GPUs holding
the policy rank, the critic rank, the rollout actor and two half-GPU scorers puts each whole-GPU actor on its
own device and the two halves together, so memory is counted per device, never spread over the bundle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fgrlhf.config import DeepSpeedConfig
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

_EPS = 1e-9


@dataclass(frozen=True)
class Slot:
    """One actor: its role, index within the role, bundle, and the resources the actor itself asks for."""

    role: str
    index: int
    bundle: int
    cpus: float
    gpus: float


@dataclass(frozen=True)
class PlacementPlan:
    bundles: list[dict[str, float]]  # as passed to ray.util.placement_group (zero resources left out)
    slots: list[Slot]  # in actor-creation order
    strategy: str = "PACK"

    def slot(self, role: str, index: int = 0) -> Slot:
        return next(s for s in self.slots if (s.role, s.index) == (role, index))

    @property
    def num_gpus(self) -> float:
        return sum(b.get("GPU", 0.0) for b in self.bundles)

    @property
    def num_cpus(self) -> float:
        return sum(b.get("CPU", 0.0) for b in self.bundles)


def _plan(specs: list[tuple[str, int, float, float]], colocated: bool, strategy: str) -> PlacementPlan:
    slots_index = [index for _, index, _, _ in specs] if colocated else list(range(len(specs)))
    totals = [{"CPU": 0.0, "GPU": 0.0} for _ in range(max(slots_index) + 1)]
    for slot, (_, _, cpus, gpus) in zip(slots_index, specs):
        totals[slot]["CPU"] += cpus
        totals[slot]["GPU"] += gpus
    bundles = [{k: v for k, v in b.items() if v > 0} for b in totals]
    slots = [Slot(role, index, slot, cpus, gpus) for slot, (role, index, cpus, gpus) in zip(slots_index, specs)]
    return PlacementPlan(bundles, slots, strategy)


def ppo_placement(cfg: PPOTrainConfig) -> PlacementPlan:
    """The PPO job's bundles and slots: policy ranks, critic ranks, rollout actors, reward, reference."""
    pol, cri = cfg.policy_learner, cfg.critic_learner
    specs = (
        [("policy", i, pol.num_cpus_per_rank, pol.num_gpus_per_rank) for i in range(pol.world_size)]
        + [("critic", i, cri.num_cpus_per_rank, cri.num_gpus_per_rank) for i in range(cri.world_size)]
        + [("rollout", i, cfg.rollout.num_cpus, cfg.rollout.num_gpus) for i in range(cfg.rollout.num_actors)]
        + [
            ("reward", 0, cfg.reward.num_cpus, cfg.reward.num_gpus),
            ("reference", 0, cfg.reference.num_cpus, cfg.reference.num_gpus),
        ]
    )
    return _plan(specs, cfg.placement.mode == "colocated", cfg.placement.strategy)


def supervised_placement(ds: DeepSpeedConfig, role: str = "learner") -> PlacementPlan:
    """RM / FIGA / SFT training: one bundle per DeepSpeed rank."""
    return _plan(
        [(role, i, ds.num_cpus_per_rank, ds.num_gpus_per_rank) for i in range(ds.world_size)],
        colocated=False,
        strategy="PACK",
    )


def actor_options(group, slot: Slot) -> dict:
    """``ray.remote(...).options`` that put an actor into its slot's bundle with the slot's resources."""
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {
        "num_cpus": slot.cpus,
        "num_gpus": slot.gpus,
        "scheduling_strategy": PlacementGroupSchedulingStrategy(
            placement_group=group, placement_group_bundle_index=slot.bundle
        ),
    }


def assign_gpus(plan: PlacementPlan) -> list[list[int]]:
    """Per bundle, the global GPU indices it occupies (empty for CPU-only bundles).

    Whole-GPU bundles take fresh devices in bundle order; a fractional bundle is put on the fullest device that
    still has room (best fit, as Ray allocates fractional GPUs), else on a fresh one. A bundle asking for
    more than one GPU must ask for whole GPUs (Ray refuses e.g. 1.5)."""
    used: list[float] = []  # load per device
    out: list[list[int]] = []
    for number, bundle in enumerate(plan.bundles):
        gpus = bundle.get("GPU", 0.0)
        if gpus <= 0:
            out.append([])
        elif gpus >= 1.0 - _EPS:
            if abs(gpus - round(gpus)) > _EPS:
                raise ValueError(f"bundle {number} asks for {gpus} GPUs: above 1 a bundle needs a whole number")
            start = len(used)
            used += [1.0] * round(gpus)
            out.append(list(range(start, len(used))))
        else:
            fits = [i for i, load in enumerate(used) if load + gpus <= 1.0 + _EPS]
            if fits:
                best = max(fits, key=lambda i: used[i])
                used[best] += gpus
            else:
                best = len(used)
                used.append(gpus)
            out.append([best])
    return out


def slot_devices(plan: PlacementPlan) -> list[list[int]]:
    """Per slot (in ``plan.slots`` order), the global GPU indices its actor gets inside its bundle.

    Ray gives an actor in a multi-GPU bundle whole devices of its own, and packs fractional actors best fit
    onto the bundle's devices, in creation order; the same rules as :func:`assign_gpus`, one level down."""
    bundle_devices = assign_gpus(plan)
    load: dict[int, float] = {}
    out: list[list[int]] = []
    for slot in plan.slots:
        mine = bundle_devices[slot.bundle]
        if slot.gpus <= 0:
            out.append([])
        elif slot.gpus >= 1.0 - _EPS:
            fresh = [d for d in mine if load.get(d, 0.0) <= _EPS][: round(slot.gpus)]
            if abs(slot.gpus - round(slot.gpus)) > _EPS or len(fresh) < round(slot.gpus):
                raise ValueError(f"{slot.role}[{slot.index}] asks for {slot.gpus} GPUs its bundle cannot give whole")
            load.update(dict.fromkeys(fresh, 1.0))
            out.append(fresh)
        else:
            fits = [d for d in mine if load.get(d, 0.0) + slot.gpus <= 1.0 + _EPS]
            if not fits:
                raise ValueError(f"{slot.role}[{slot.index}] ({slot.gpus} GPU) fits on no device of its bundle")
            best = max(fits, key=lambda d: load.get(d, 0.0))
            load[best] = load.get(best, 0.0) + slot.gpus
            out.append([best])
    return out
