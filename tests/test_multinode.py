"""Tiny PPO on a 2-node Ray cluster on one machine (two raylets of ray.cluster_utils): the actors spread over
both nodes, the DeepSpeed learner group, the weight push (gloo over TCP) and the checkpoints all cross nodes.
This is the test that proves nothing assumes one node."""

from pathlib import Path

import pytest

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


@pytest.fixture
def two_nodes():
    """A head without resources and two worker nodes of 1 CPU each: the job's 1.75 CPUs need both. The shared
    ``ray_session`` fixture is not used; a connection left over from another module is closed first."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield {node.node_id for node in nodes}
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_tiny_ppo_across_two_nodes(two_nodes, tmp_path, monkeypatch):
    import ray

    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.cluster import Cluster
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.trainer import train

    seen: dict = {}
    original_shutdown = Cluster.shutdown

    def observe_then_shutdown(cluster):
        """Before the actors go: where each ran, and the weights the rollout actor last received."""

        def node_of(actor):
            return ray.get(actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id()))

        seen["nodes"] = {
            (role, i): node_of(actor)
            for role in ("policy", "critic", "rollout")
            for i, actor in enumerate(getattr(cluster, role))
        }
        seen["nodes"]["reward", 0], seen["nodes"]["reference", 0] = node_of(cluster.reward), node_of(cluster.reference)
        seen["learner"] = ray.get([r.weights_checksum.remote() for r in cluster.policy])[0]
        seen["rollout"] = ray.get([a.weights_checksum.remote() for a in cluster.rollout])
        original_shutdown(cluster)

    monkeypatch.setattr(Cluster, "shutdown", observe_then_shutdown)
    # SPREAD: consecutive bundles go to different nodes, so of two rollout actors one is on the node without
    # policy rank 0 (8 actors x 0.25 CPU fill both nodes). ZeRO-1: each policy rank writes its own shard.
    cfg = load_config(
        PPOTrainConfig,
        CONFIG,
        [
            "steps=2",
            "save_every=1",
            "rollout.max_new_tokens=8",
            "rollout.num_actors=2",
            "placement.strategy=SPREAD",
            "policy_learner.zero_stage=1",
            "weight_sync.backend=gloo",
        ],
    )
    record = train(cfg, tmp_path)

    assert record["step"] == 2
    nodes = seen["nodes"]
    assert set(nodes.values()) == two_nodes  # both nodes host actors
    assert nodes["policy", 0] != nodes["policy", 1]  # the DeepSpeed group spans the nodes
    assert {nodes["rollout", 0], nodes["rollout", 1]} - {nodes["policy", 0]}  # the weight push crosses nodes
    # Every rollout actor holds exactly the learner's weights after the last push.
    for received in seen["rollout"]:
        assert {k: v for k, v in seen["learner"].items() if k in received} == received
        assert set(received) >= {k for k in seen["learner"] if k != "lm_head.weight"}
    # Both policy ranks, on different nodes, wrote their optimizer shards into the shared directory.
    step = tmp_path / "checkpoints" / "step_2" / "policy" / "ds"
    assert {p.name for p in step.glob("*optim_states.pt")} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    }
    assert (tmp_path / "final" / "config.json").is_file()
