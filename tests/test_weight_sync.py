"""Weight push policy learner → rollout actor: bucketing, the standalone group, and a checksum check on Ray
with 2 DeepSpeed ranks at ZeRO 0 and ZeRO 3."""

import threading

import pytest
import torch

from fgrlhf.distributed import free_port
from fgrlhf.weight_sync import WeightSyncGroup, buckets, layout_of


def test_buckets_split_by_size_and_dtype():
    tensors = [("a", torch.zeros(256)), ("b", torch.zeros(256)), ("c", torch.zeros(300)),
               ("d", torch.zeros(10, dtype=torch.bfloat16)), ("e", torch.zeros(10))]
    layout = layout_of(tensors)
    # 2 KiB limit: a+b (2048 bytes) fit together, c alone, then a dtype change starts new buckets.
    assert buckets(layout, 2048 / 2**20) == [[0, 1], [2], [3], [4]]
    # A tensor larger than the limit still travels, alone.
    assert buckets(layout_of([("big", torch.zeros(1000))]), 1 / 2**20) == [[0]]


def test_group_broadcasts_exact_tensors_in_buckets():
    torch.manual_seed(0)
    sent = [("w1", torch.randn(3, 5)), ("b1", torch.randn(5)), ("half", torch.randn(4).to(torch.bfloat16)),
            ("w2", torch.randn(7, 2))]
    layout = layout_of(sent)
    port = free_port()
    errors = []

    def sender():
        try:
            WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", "t").send(sent, bucket_mb=64 / 2**20)
        except Exception as exc:  # surfaced below: a failing sender would otherwise hang silently
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    received = list(WeightSyncGroup("127.0.0.1", port, 1, 2, "gloo", "t").receive(layout, bucket_mb=64 / 2**20))
    thread.join()
    assert not errors
    assert [name for name, _ in received] == [name for name, _ in sent]
    for (_, want), (_, got) in zip(sent, received):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 3])
def test_push_makes_generator_weights_equal_learner_weights(ray_session, zero_stage):
    ray = ray_session
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.workers.learner_worker import LearnerWorker
    from fgrlhf.workers.rollout_worker import RolloutWorker

    ds = DeepSpeedConfig(zero_stage=zero_stage, world_size=2, micro_batch_size=1, num_cpus_per_rank=0.5)
    learner_cfg = ModelConfig(name="tiny", seed=0)
    ranks = [ray.remote(LearnerWorker).options(num_cpus=0.5).remote("policy", r, 2, ds, learner_cfg)
             for r in range(2)]
    # The generator starts from different (seed 1) weights, so equality can only come from the push.
    rollout = ray.remote(RolloutWorker).options(num_cpus=0.5).remote("hf", ModelConfig(name="tiny", seed=1))
    try:
        addr, port = ray.get(ranks[0].rendezvous_address.remote())
        ray.get([r.setup.remote(addr, port) for r in ranks] + [rollout.ready.remote()])
        # Collective under ZeRO-3 (a gather), so every rank is asked at once.
        learner_sums, other_rank_sums = ray.get([r.weights_checksum.remote() for r in ranks])
        assert other_rank_sums == learner_sums
        assert ray.get(rollout.weights_checksum.remote()) != learner_sums

        layout = ray.get([r.weight_layout.remote() for r in ranks])[0]
        assert [name for name, _, _ in layout] == list(learner_sums)
        addr, port = ray.get(ranks[0].rendezvous_address.remote())
        ray.get([ranks[0].join_weight_sync.remote(addr, port, 2, "gloo", "test"),
                 rollout.join_weight_sync.remote(addr, port, 1, 2, "gloo", "test")])
        bucket_mb = 0.05  # ~50 KiB: the tiny model's weights travel in several buckets
        ray.get([rollout.receive_weights.remote(layout, bucket_mb)]
                + [r.push_weights.remote(bucket_mb) for r in ranks])
        assert ray.get(rollout.weights_checksum.remote()) == learner_sums
    finally:
        for actor in ranks + [rollout]:
            ray.kill(actor)
