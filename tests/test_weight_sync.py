"""Weight push policy learner → rollout actor: bucketing, the standalone group, its backend and timeout, the
config checks, and a checksum check on Ray with 2 DeepSpeed ranks at ZeRO 0 and ZeRO 3."""

import logging
import os
import threading
import time
from datetime import timedelta

import pytest
import torch

from fgrlhf.runtime.distributed import free_port
from fgrlhf.runtime.weight_sync import WeightPushError, WeightSyncGroup, buckets, choose_backend, layout_of


def test_buckets_split_by_size_and_dtype():
    tensors = [
        ("a", torch.zeros(256)),
        ("b", torch.zeros(256)),
        ("c", torch.zeros(300)),
        ("d", torch.zeros(10, dtype=torch.bfloat16)),
        ("e", torch.zeros(10)),
    ]
    layout = layout_of(tensors)
    # 2 KiB limit: a+b (2048 bytes) fit together, c alone, then a dtype change starts new buckets.
    assert buckets(layout, 2048 / 2**20) == [[0, 1], [2], [3], [4]]
    # A tensor larger than the limit still travels, alone.
    assert buckets(layout_of([("big", torch.zeros(1000))]), 1 / 2**20) == [[0]]


def test_group_broadcasts_exact_tensors_in_buckets():
    torch.manual_seed(0)
    sent = [
        ("w1", torch.randn(3, 5)),
        ("b1", torch.randn(5)),
        ("half", torch.randn(4).to(torch.bfloat16)),
        ("w2", torch.randn(7, 2)),
    ]
    layout = layout_of(sent)
    port = free_port()
    errors = []

    def sender():
        try:
            group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", "t", timeout_s=60)
            for indices in buckets(layout, 64 / 2**20):
                group.send_bucket([sent[i][1] for i in indices])
        except Exception as exc:  # surfaced below: a failing sender would otherwise hang silently
            errors.append(exc)

    thread = threading.Thread(target=sender)
    thread.start()
    receiver = WeightSyncGroup("127.0.0.1", port, 1, 2, "gloo", "t", timeout_s=60)
    received = list(receiver.receive(layout, bucket_mb=64 / 2**20))
    thread.join()
    assert not errors
    assert [name for name, _ in received] == [name for name, _ in sent]
    for (_, want), (_, got) in zip(sent, received):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_timeout_reaches_the_group_a_silent_receiver_fails_the_push_instead_of_hanging():
    port = free_port()
    joined = threading.Event()

    def silent_receiver():  # joins, then never takes part in the broadcast
        group = WeightSyncGroup("127.0.0.1", port, 1, 2, "gloo", "t", timeout_s=2)
        joined.set()
        time.sleep(6)
        del group  # held until here: a collected group would close its connections at once

    thread = threading.Thread(target=silent_receiver)
    thread.start()
    group = WeightSyncGroup("127.0.0.1", port, 0, 2, "gloo", "t", timeout_s=2)
    assert joined.wait(10)
    start = time.monotonic()
    with pytest.raises(WeightPushError, match=r"gloo, rank 0 of 2\) did not complete within 2 s: .*[Tt]imed out"):
        group.send_bucket([torch.zeros(1000)])
    assert time.monotonic() - start < 5  # the group's 2 s, not gloo's 30 min default
    assert group.group is None  # aborted: a failed group is never used again
    thread.join()


def test_timeout_bounds_the_rendezvous_when_a_receiver_never_joins():
    start = time.monotonic()
    with pytest.raises(Exception, match="timeout"):
        WeightSyncGroup("127.0.0.1", free_port(), 0, 2, "gloo", "never", timeout_s=2)
    assert time.monotonic() - start < 5


class _NCCLLikeWork:
    """A broadcast whose peer never takes part, as torch's ProcessGroupNCCL reports it: ``wait()`` only orders
    the CUDA stream and returns at once; ``wait(timeout)`` blocks the CPU and raises when the time is up."""

    def __init__(self, group):
        self.group = group

    def wait(self, timeout=None):
        self.group.waits.append(timeout)
        if timeout is None:
            return True
        raise RuntimeError(f"[Rank 0] Work WorkNCCL(OpType=BROADCAST) timed out in blocking wait ({timeout})")


class _FakeNCCLGroup:
    """Stands in for ProcessGroupNCCL, which a CPU build of torch lacks; records what the push group does."""

    class Options:
        def __init__(self):
            self._timeout = timedelta(minutes=10)

    def __init__(self, store, rank, world_size, options):
        self.options, self.waits, self.aborted = options, [], False
        self.cumem_at_creation = os.environ.get("NCCL_CUMEM_ENABLE")

    def broadcast(self, tensors, options):
        return _NCCLLikeWork(self)

    def abort(self):
        self.aborted = True


def test_nccl_push_failure_is_a_weight_push_error_before_the_watchdog(monkeypatch):
    """Under NCCL a stuck receiver must end in WeightPushError (resumable), as under gloo, not in NCCL's watchdog
    killing the learner: the broadcast is waited for on the CPU for timeout_s, then the group is aborted. The
    watchdog's limit is longer, and NCCL_CUMEM_ENABLE is set before the communicator exists."""
    import torch.distributed as dist

    monkeypatch.setattr(dist, "ProcessGroupNCCL", _FakeNCCLGroup, raising=False)
    monkeypatch.setenv("NCCL_CUMEM_ENABLE", "unset-below")
    monkeypatch.delenv("NCCL_CUMEM_ENABLE")  # restored to its original state afterwards
    group = WeightSyncGroup("127.0.0.1", free_port(), 0, 2, "nccl", "t", timeout_s=7)
    fake = group.group
    assert fake.cumem_at_creation == "0"  # the value vLLM's worker runs with
    assert fake.options._timeout > timedelta(seconds=7)  # the blocking wait times out first
    group.device = torch.device("cpu")  # the only CUDA use on the way; the fake group takes CPU tensors
    with pytest.raises(WeightPushError, match=r"nccl, rank 0 of 2\) did not complete within 7 s: .*timed out"):
        group.send_bucket([torch.zeros(10)])
    assert fake.waits == [timedelta(seconds=7)] and fake.aborted
    with pytest.raises(WeightPushError, match="closed"):  # aborted for good: the driver rebuilds the group
        group.send_bucket([torch.zeros(10)])


def test_nccl_settings_are_one_set_shared_by_every_process(monkeypatch):
    from fgrlhf.runtime.distributed import NCCL_ENV, apply_nccl_env

    monkeypatch.setenv("NCCL_CUMEM_ENABLE", "1")  # a user's explicit choice reaches every process: kept
    assert apply_nccl_env() == {**NCCL_ENV, "NCCL_CUMEM_ENABLE": "1"}
    monkeypatch.delenv("NCCL_CUMEM_ENABLE")
    assert apply_nccl_env() == NCCL_ENV == {"NCCL_CUMEM_ENABLE": "0"}
    assert os.environ["NCCL_CUMEM_ENABLE"] == "0"


def test_learner_group_gets_the_configured_timeout(monkeypatch):
    """init_rank hands the timeout to DeepSpeed (whose own default is 10 minutes) and checks the backend."""
    import deepspeed

    from fgrlhf.runtime.distributed import init_rank

    calls = []
    monkeypatch.setattr(deepspeed, "init_distributed", lambda **kwargs: calls.append(kwargs))
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)  # init_rank sets them; restored afterwards
    assert init_rank(1, 2, "127.0.0.1", 1234, "auto", timeout_s=42) == torch.device("cpu")
    assert calls == [{"dist_backend": "gloo", "auto_mpi_discovery": False, "timeout": timedelta(seconds=42)}]
    with pytest.raises(ValueError, match="backend=nccl, but this rank has no GPU"):
        init_rank(1, 2, "127.0.0.1", 1234, "nccl", timeout_s=42)


def test_backend_is_chosen_from_what_the_members_report():
    assert choose_backend("auto", [True, True, True]) == "nccl"
    assert choose_backend("auto", [True, False]) == "gloo"  # a CPU rollout actor: TCP
    assert choose_backend("auto", [False, True]) == "gloo"
    assert choose_backend("gloo", [True, True]) == "gloo"
    assert choose_backend("nccl", [True, True]) == "nccl"
    with pytest.raises(ValueError, match=r"rank\(s\) \[1\] .*see no GPU"):
        choose_backend("nccl", [True, False])


def test_vllm_tied_head_is_re_tied_by_name_never_by_pointer():
    from fgrlhf.workers.vllm_engine import tie_lm_head

    # Two buckets that reuse one buffer, as consecutive received buckets do: equal data_ptr, distinct weights.
    arena = torch.zeros(4)
    first = ("model.embed_tokens.weight", arena[:2].view(1, 2))
    second = ("model.norm.weight", arena[:2])
    assert first[1].data_ptr() == second[1].data_ptr()
    assert [name for name, _ in tie_lm_head([first, second], tied=True)] == [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ]
    out = dict(tie_lm_head([first, second], tied=True))
    assert out["lm_head.weight"] is first[1]
    # A pushed lm_head.weight of a tied model is the embedding again: replaced, not loaded twice.
    head = ("lm_head.weight", torch.ones(1, 2))
    assert [name for name, _ in tie_lm_head([head, first], tied=True)] == [
        "model.embed_tokens.weight",
        "lm_head.weight",
    ]
    # Untied: everything passes through as sent.
    assert [name for name, _ in tie_lm_head([first, head, second], tied=False)] == [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
    ]


def ppo_config(**overrides):
    from fgrlhf.config import load_config
    from fgrlhf.trainers.ppo.config import PPOTrainConfig

    items = [
        "reward.model=tiny-token",
        "ppo.rollout_batch_size=4",
        "ppo.step_batch_size=4",
        "policy_learner.micro_batch_size=1",
        "critic_learner.micro_batch_size=1",
    ]
    return load_config(PPOTrainConfig, overrides=items + [f"{k}={v}" for k, v in overrides.items()])


@pytest.mark.parametrize("mode", ["colocated", "separate"])
def test_nccl_push_with_two_fractional_gpu_members_is_a_config_error(mode):
    from fgrlhf.config import ConfigError

    shared = {"placement.mode": mode, "policy_learner.num_gpus_per_rank": 0.5, "rollout.num_gpus": 0.5}
    for backend in ("auto", "nccl"):
        with pytest.raises(ConfigError, match="NCCL refuses"):
            ppo_config(**shared, **{"weight_sync.backend": backend})
    ppo_config(**shared, **{"weight_sync.backend": "gloo"})  # gloo over TCP does not mind
    # A member holding whole GPUs cannot share one: fine with NCCL.
    ppo_config(**{"placement.mode": mode, "policy_learner.num_gpus_per_rank": 1, "rollout.num_gpus": 0.5})
    with pytest.raises(ConfigError, match="NCCL refuses"):  # two fractional rollout actors may share
        ppo_config(**{"policy_learner.num_gpus_per_rank": 1, "rollout.num_gpus": 0.5, "rollout.num_actors": 2})


def test_nccl_push_without_gpus_is_a_config_error():
    from fgrlhf.config import ConfigError

    with pytest.raises(ConfigError, match="nccl needs a GPU"):
        ppo_config(**{"weight_sync.backend": "nccl", "policy_learner.num_gpus_per_rank": 1})
    ppo_config(**{"policy_learner.num_gpus_per_rank": 1})  # auto: gloo to the CPU rollout actor


def save_tiny(directory) -> str:
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer("tiny")
    load_causal_lm(ModelConfig(name="tiny", seed=0), tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage,source", [(0, "tiny"), (3, "checkpoint")])
def test_push_makes_generator_weights_equal_learner_weights(ray_session, zero_stage, source, tmp_path):
    """ZeRO-3 gathers one bucket at a time during the push, its learner loaded from a directory, which goes
    through deepspeed.zero.Init (``tiny`` is built in memory)."""
    ray = ray_session
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.workers.learner_worker import PolicyLearner
    from fgrlhf.workers.rollout_worker import RolloutWorker

    ds = DeepSpeedConfig(zero_stage=zero_stage, world_size=2, micro_batch_size=1, num_cpus_per_rank=0.5)
    learner_cfg = ModelConfig(name="tiny" if source == "tiny" else save_tiny(tmp_path / "ckpt"), seed=0)
    ranks = [ray.remote(PolicyLearner).options(num_cpus=0.5).remote(r, 2, ds, learner_cfg) for r in range(2)]
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
        # The tied lm_head is the embedding: pushed once, under the embedding's name.
        assert [name for name, _, _ in layout] == [n for n in learner_sums if n != "lm_head.weight"]
        addr, port = ray.get(ranks[0].rendezvous_address.remote())
        ray.get(
            [
                ranks[0].join_weight_sync.remote(addr, port, 2, "gloo", "test", 60),
                rollout.join_weight_sync.remote(addr, port, 1, 2, "gloo", "test", 60),
            ]
        )
        bucket_mb = 0.05  # ~50 KiB: the tiny model's weights travel in several buckets
        ray.get([rollout.receive_weights.remote(layout, bucket_mb)] + [r.push_weights.remote(bucket_mb) for r in ranks])
        assert ray.get(rollout.weights_checksum.remote()) == learner_sums
    finally:
        for actor in ranks + [rollout]:
            ray.kill(actor)


@pytest.mark.slow
def test_zero3_learner_is_built_partitioned_under_zero_init(ray_session, tmp_path):
    ray = ray_session
    path = save_tiny(tmp_path / "ckpt")

    @ray.remote(num_cpus=0.5, max_calls=1)  # its own process, gone afterwards (it joins a process group)
    def load_under_zero3(path: str):
        from fgrlhf.config import DeepSpeedConfig, ModelConfig
        from fgrlhf.models import load_causal_lm
        from fgrlhf.runtime.distributed import free_port, init_rank, leave_group, zero3_init

        init_rank(0, 1, "127.0.0.1", free_port(), "gloo")
        try:
            with zero3_init(DeepSpeedConfig(zero_stage=3), tiny_model=True):
                model = load_causal_lm(ModelConfig(name=path))
        finally:
            leave_group()  # the worker process exits after this task (max_calls=1): never with a live group
        return [(name, p.data.numel(), tuple(getattr(p, "ds_shape", ()))) for name, p in model.named_parameters()]

    from transformers import AutoModelForCausalLM

    full = AutoModelForCausalLM.from_pretrained(path)
    loaded = ray.get(load_under_zero3.remote(path))
    # Each parameter was partitioned as it was created: nothing whole was ever allocated on the host.
    assert [(name, 0, tuple(p.shape)) for name, p in full.named_parameters()] == loaded


@pytest.mark.slow
def test_backend_comes_from_the_members_and_a_stuck_receiver_fails_the_push(ray_session, monkeypatch, caplog):
    """The driver believing it has a GPU changes nothing (the members have none: gloo); a receiver that stops
    answering makes the push fail within weight_sync.timeout_s with a WeightPushError, not hang."""
    import os
    import signal

    ray = ray_session
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.trainers.ppo.cluster import Cluster
    from fgrlhf.workers.learner_worker import PolicyLearner
    from fgrlhf.workers.rollout_worker import RolloutWorker

    ds = DeepSpeedConfig(world_size=1, micro_batch_size=1, num_cpus_per_rank=0.5)
    learner = ray.remote(PolicyLearner).options(num_cpus=0.5).remote(0, 1, ds, ModelConfig(seed=0))
    rollout = ray.remote(RolloutWorker).options(num_cpus=0.5).remote("hf", ModelConfig(seed=1))
    stopped = None
    try:
        addr, port = ray.get(learner.rendezvous_address.remote())
        ray.get([learner.setup.remote(addr, port), rollout.ready.remote()])
        cluster = Cluster.__new__(Cluster)  # just the push: policy rank 0 and one rollout actor
        cluster.cfg = ppo_config(**{"weight_sync.timeout_s": 3, "weight_sync.bucket_mb": 0.05})
        cluster.policy, cluster.rollout = [learner], [rollout]
        cluster.layout = ray.get(learner.weight_layout.remote())

        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        with caplog.at_level(logging.INFO, logger="fgrlhf.trainers.ppo.cluster"):
            assert cluster.connect_weight_sync() == "gloo"
        assert "weight push: gloo" in caplog.text
        cluster.push_weights()
        assert ray.get(rollout.weights_checksum.remote()) == ray.get(learner.weights_checksum.remote())

        stopped = ray.get(rollout.__ray_call__.remote(lambda actor: os.getpid()))
        os.kill(stopped, signal.SIGSTOP)  # alive but silent, like a receiver stuck on its GPU
        start = time.monotonic()
        with pytest.raises(WeightPushError, match=r"(?s)timeout_s=3.*--resume"):
            cluster.push_weights()
        assert time.monotonic() - start < 30
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        for actor in (learner, rollout):
            ray.kill(actor)
