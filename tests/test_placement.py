"""Placement over a simulated GPU cluster: several raylets with made-up ``num_gpus`` (ray.cluster_utils), no
model loaded. The paper's 8xA100 configs' placement groups form, each role lands in the bundle, node and GPU
that `fgrlhf plan` (fgrlhf.runtime.placement) says, and the half-GPU reward and reference actors share one device.

The placeholder actors are scheduled with the very options the PPO Cluster uses (``actor_options``)."""

from pathlib import Path

import pytest

from fgrlhf.runtime.placement import (
    PlacementPlan,
    actor_options,
    assign_gpus,
    ppo_placement,
    slot_devices,
    supervised_placement,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _load(cls_path: str, name: str):
    from fgrlhf.config import load_config

    if cls_path == "ppo":
        from fgrlhf.trainers.ppo.config import PPOTrainConfig as cls
    else:
        from fgrlhf.reward.train import RMTrainConfig as cls
    return load_config(cls, CONFIGS / name)


@pytest.fixture(params=[(1, 8), (2, 4)], ids=["1x8gpu", "2x4gpu"])
def sim_cluster(request):
    """A head without resources plus N simulated nodes of G GPUs; the module's own Ray connection (the shared
    ``ray_session`` fixture is not used here, and one left over from another module is shut down first)."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    nodes, gpus = request.param
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "num_gpus": 0, "include_dashboard": False})
    for _ in range(nodes):
        # Logical CPUs: as many as a job asks for (the RM's 8 ranks x 8), so only the GPUs constrain packing.
        cluster.add_node(num_cpus=64, num_gpus=gpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield nodes, gpus
    finally:
        ray.shutdown()
        cluster.shutdown()


def _place(plan: PlacementPlan) -> tuple[list[dict], list[str]]:
    """Reserve the plan's group as the Cluster does, start a placeholder per slot; (observations, bundle nodes)."""
    import ray
    from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group

    @ray.remote
    class Probe:
        def where(self) -> dict:
            return {"node": ray.get_runtime_context().get_node_id(), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    group = placement_group(plan.bundles, strategy=plan.strategy)  # as placement_group_for, but bounded
    try:
        ray.get(group.ready(), timeout=120)
        actors = [Probe.options(**actor_options(group, slot)).remote() for slot in plan.slots]
        seen = ray.get([a.where.remote() for a in actors], timeout=120)
        table = placement_group_table(group)["bundles_to_node_id"]
        for actor in actors:
            ray.kill(actor)
    finally:
        remove_placement_group(group)
    return seen, [table[i] for i in range(len(plan.bundles))]


def _check(plan: PlacementPlan, seen: list[dict], bundle_nodes: list[str], gpus_per_node: int) -> None:
    devices = slot_devices(plan)
    device_of: dict[int, tuple] = {}  # planned device -> (node, GPU id) Ray gave
    for slot, obs, mine in zip(plan.slots, seen, devices):
        assert obs["node"] == bundle_nodes[slot.bundle], slot  # in its bundle
        assert len(obs["gpus"]) == len(mine) == (1 if slot.gpus else 0), (slot, obs)
        assert set(mine) <= set(assign_gpus(plan)[slot.bundle])
        for d, gpu in zip(mine, obs["gpus"]):
            assert device_of.setdefault(d, (obs["node"], gpu)) == (obs["node"], gpu), slot
    # One planned device is one physical device: no two planned devices share a GPU.
    assert len(set(device_of.values())) == len(device_of)
    # The plan's nodes (device // gpus_per_node) group the actors as Ray did.
    planned = {}
    for d, (node, _) in device_of.items():
        planned.setdefault(d // gpus_per_node, set()).add(node)
    assert all(len(nodes) == 1 for nodes in planned.values()), planned
    assert len({next(iter(n)) for n in planned.values()}) == len(planned)


@pytest.mark.slow
def test_8xa100_ppo_and_rm_place_as_planned(sim_cluster):
    _, gpus_per_node = sim_cluster
    plan = ppo_placement(_load("ppo", "ppo-llama7b-8xa100.yaml"))
    seen, bundle_nodes = _place(plan)
    _check(plan, seen, bundle_nodes, gpus_per_node)
    by_role = {(s.role, s.index): obs for s, obs in zip(plan.slots, seen)}
    # Fractional GPUs pack: reward (0.5) and reference (0.5) on one device, every other role on its own.
    assert by_role["reward", 0] == by_role["reference", 0]
    whole = [(obs["node"], obs["gpus"][0]) for (role, _), obs in by_role.items() if role not in ("reward", "reference")]
    assert len(set(whole)) == len(whole) == 7

    rm = supervised_placement(_load("rm", "rm-token-llama7b-8xa100.yaml").deepspeed)
    seen, bundle_nodes = _place(rm)
    _check(rm, seen, bundle_nodes, gpus_per_node)
    assert len({(obs["node"], obs["gpus"][0]) for obs in seen}) == 8


@pytest.mark.slow
def test_colocated_bundle_gives_whole_gpu_actors_devices_of_their_own(sim_cluster):
    """Inside bundle 0 (4 GPUs) Ray gives policy 0, critic 0 and the rollout actor a device each and puts the
    two half-GPU scorers together: the per-device accounting `fgrlhf plan` does for colocated bundles."""
    _, gpus_per_node = sim_cluster
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    plan = ppo_placement(load_config(PPOTrainConfig, CONFIGS / "ppo-llama7b-8xa100.yaml", ["placement.mode=colocated"]))
    seen, bundle_nodes = _place(plan)
    _check(plan, seen, bundle_nodes, gpus_per_node)
    by_role = {(s.role, s.index): (obs["node"], obs["gpus"][0]) for s, obs in zip(plan.slots, seen)}
    bundle0 = [by_role[k] for k in [("policy", 0), ("critic", 0), ("rollout", 0), ("reward", 0)]]
    assert len(set(bundle0)) == 4 and by_role["reference", 0] == by_role["reward", 0]
