"""Per-actor GPU stats (fgrlhf.runtime.device_stats): the actor-side reading with torch.cuda faked, the step
metric keys, the tagged Ray gauges, and the gating that keeps a CPU-only run free of them."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import ClassVar

import pytest
import torch

from fgrlhf.runtime import device_stats as ds
from fgrlhf.runtime.placement import Slot

GIB = 1024**3
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "ppo-tiny-cpu.yaml"


class FakeCuda:
    """A device whose allocator peaks at ``peak`` bytes until ``reset_peak_memory_stats``."""

    def __init__(self, initialized: bool = True):
        self.initialized = initialized
        self.allocated, self.reserved, self.peak = 2 * GIB, 3 * GIB, 5 * GIB
        self.resets: list[int] = []
        self.util_devices: list[int] = []

    def install(self, monkeypatch, utilization=None) -> FakeCuda:
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "is_initialized", lambda: self.initialized)
        monkeypatch.setattr(cuda, "current_device", self._touch(lambda: 0))
        monkeypatch.setattr(cuda, "memory_allocated", self._touch(lambda d: self.allocated))
        monkeypatch.setattr(cuda, "memory_reserved", self._touch(lambda d: self.reserved))
        monkeypatch.setattr(cuda, "max_memory_allocated", self._touch(lambda d: self.peak))
        monkeypatch.setattr(
            cuda, "get_device_properties", self._touch(lambda d: SimpleNamespace(total_memory=80 * GIB))
        )
        monkeypatch.setattr(cuda, "reset_peak_memory_stats", self._touch(self._reset))
        monkeypatch.setattr(cuda, "utilization", utilization or self._utilization)
        return self

    def _touch(self, fn):
        """``fn``, refusing to run in a process that has not initialised CUDA (it would create a context)."""

        def wrapped(*args):
            if not self.initialized:
                raise AssertionError("touched CUDA in a process that never used it")
            return fn(*args)

        return wrapped

    def _reset(self, device: int) -> None:
        self.resets.append(device)
        self.peak = self.allocated

    def _utilization(self, device: int) -> int:
        self.util_devices.append(device)
        return 42


def test_no_cuda_no_keys(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ds.device_stats() == {}


def test_cuda_stats_in_gib_and_peak_reset(monkeypatch):
    fake = FakeCuda().install(monkeypatch)
    assert ds.device_stats() == {
        "mem_allocated_gib": 2.0,
        "mem_reserved_gib": 3.0,
        "mem_peak_gib": 5.0,
        "mem_total_gib": 80.0,
        "util_pct": 42.0,
    }
    assert fake.resets == [0]
    # the next call's peak is the most allocated since this one, not since the start
    fake.allocated = GIB // 2
    second = ds.device_stats()
    assert second["mem_peak_gib"] == 2.0 and second["mem_allocated_gib"] == 0.5
    assert fake.resets == [0, 0]


def test_no_nvml_no_utilisation(monkeypatch):
    def missing(device):
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    FakeCuda().install(monkeypatch, utilization=missing)
    stats = ds.device_stats()
    assert "util_pct" not in stats and stats["mem_peak_gib"] == 5.0


def test_nvml_refusing_warns_once(monkeypatch, caplog):
    def refused(device):
        raise RuntimeError("Not Supported")

    FakeCuda().install(monkeypatch, utilization=refused)
    monkeypatch.setattr(ds, "_nvml_warned", False)
    with caplog.at_level(logging.WARNING, logger=ds.__name__):
        assert "util_pct" not in ds.device_stats()
        assert "util_pct" not in ds.device_stats()
    assert [r.getMessage() for r in caplog.records if "utilisation unavailable" in r.getMessage()] == [
        "GPU utilisation unavailable (RuntimeError: Not Supported); logging memory only"
    ]


def test_process_without_cuda_context_reports_utilisation_only(monkeypatch):
    # a vLLM rollout actor: its GPU is used by vLLM's worker process; reading memory here would create a context
    fake = FakeCuda(initialized=False).install(monkeypatch)
    assert ds.device_stats() == {"util_pct": 42.0}
    assert fake.util_devices == [0] and fake.resets == []


def test_metric_keys_per_role_and_rank():
    per_actor = {
        ("rollout", 0): {"util_pct": 90.0},
        ("policy", 1): {"mem_peak_gib": 7.5, "util_pct": 60.0},
        ("policy", 0): {"mem_peak_gib": 7.25},
    }
    metrics = ds.gpu_metrics(per_actor)
    assert metrics == {
        "gpu/policy0/mem_peak_gib": 7.25,
        "gpu/policy1/mem_peak_gib": 7.5,
        "gpu/policy1/util_pct": 60.0,
        "gpu/rollout0/util_pct": 90.0,
    }
    assert list(metrics) == sorted(metrics)


class FakeGauge:
    created: ClassVar[list[FakeGauge]] = []

    def __init__(self, name, description="", tag_keys=()):
        self.name, self.tag_keys, self.sets = name, tag_keys, []
        FakeGauge.created.append(self)

    def set(self, value, tags=None):
        self.sets.append((value, tags))


@pytest.fixture
def fake_gauges(monkeypatch):
    import ray.util.metrics

    FakeGauge.created = []
    monkeypatch.setattr(ray.util.metrics, "Gauge", FakeGauge)
    monkeypatch.setattr(ds, "_gauges", {})
    return FakeGauge.created


def test_gauges_tagged_by_role_and_rank_created_once(fake_gauges):
    ds.export_gauges({("policy", 0): {"mem_peak_gib": 1.5}, ("critic", 1): {"mem_peak_gib": 2.0, "util_pct": 10}})
    ds.export_gauges({("policy", 0): {"mem_peak_gib": 1.0}})
    assert [(g.name, g.tag_keys) for g in fake_gauges] == [
        ("fgrlhf_gpu_mem_peak_gib", ("role", "rank")),
        ("fgrlhf_gpu_util_pct", ("role", "rank")),
    ]
    peak, util = fake_gauges
    assert peak.sets == [
        (1.5, {"role": "policy", "rank": "0"}),
        (2.0, {"role": "critic", "rank": "1"}),
        (1.0, {"role": "policy", "rank": "0"}),
    ]
    assert util.sets == [(10.0, {"role": "critic", "rank": "1"})]


class FakeActor:
    def __init__(self, stats=None, dead: bool = False):
        self.device_stats = SimpleNamespace(remote=lambda: (stats, dead))


def test_step_metrics_collect_in_one_pass_and_skip_a_dead_actor(monkeypatch, fake_gauges):
    import ray
    from ray.exceptions import RayActorError

    def get(ref):
        stats, dead = ref
        if dead:
            raise RayActorError(error_msg="actor died")
        return stats

    monkeypatch.setattr(ray, "get", get)
    actors = {("policy", 0): FakeActor({"mem_peak_gib": 3.0}), ("reward", 0): FakeActor(dead=True)}
    assert ds.step_gpu_metrics(actors) == {"gpu/policy0/mem_peak_gib": 3.0}
    assert fake_gauges[0].sets == [(3.0, {"role": "policy", "rank": "0"})]


def test_no_gpu_actors_no_ray_call(monkeypatch):
    def forbidden(actors):
        raise AssertionError("a CPU-only run must not ask its actors")

    monkeypatch.setattr(ds, "collect", forbidden)
    assert ds.step_gpu_metrics({}) == {}


def _cluster(slots: list[Slot]) -> SimpleNamespace:
    return SimpleNamespace(
        policy=["policy0", "policy1"],
        critic=["critic0"],
        rollout=["rollout0"],
        reward="reward0",
        reference="reference0",
        placement=SimpleNamespace(slots=slots),
    )


def test_gpu_actors_are_the_plans_gpu_slots():
    from fgrlhf.trainers.ppo.metrics import gpu_actors

    slots = [
        Slot("policy", 0, 0, 1.0, 1.0),
        Slot("policy", 1, 1, 1.0, 1.0),
        Slot("critic", 0, 2, 1.0, 1.0),
        Slot("rollout", 0, 3, 1.0, 1.0),
        Slot("reward", 0, 4, 1.0, 0.5),
        Slot("reference", 0, 5, 1.0, 0.0),  # on CPU: not asked
    ]
    assert gpu_actors(_cluster(slots)) == {
        ("policy", 0): "policy0",
        ("policy", 1): "policy1",
        ("critic", 0): "critic0",
        ("rollout", 0): "rollout0",
        ("reward", 0): "reward0",
    }


def test_cpu_run_asks_no_actor():
    """The tiny CPU config's plan gives no actor a GPU: the PPO step makes no device-stats call, writes no gpu/ key."""
    from fgrlhf.config import load_config
    from fgrlhf.runtime.placement import ppo_placement
    from fgrlhf.trainers.ppo.config import PPOTrainConfig
    from fgrlhf.trainers.ppo.metrics import gpu_actors

    plan = ppo_placement(load_config(PPOTrainConfig, CONFIG))
    assert gpu_actors(_cluster(plan.slots)) == {}


def test_gpu_keys_keep_their_name_in_tensorboard_and_skip_the_generic_gauges(tmp_path, monkeypatch, fake_gauges):
    import ray.util.metrics

    from fgrlhf.runtime.run_dir import MetricsLog
    from fgrlhf.trainers.ppo.metrics import MetricsSink

    written = []
    monkeypatch.setattr(MetricsLog, "write", lambda self, record, scalars: written.append(scalars))
    monkeypatch.setattr(ray.util.metrics, "Histogram", lambda *a, **k: SimpleNamespace(observe=lambda *a, **k: None))
    sink = MetricsSink(tmp_path, 0)
    sink.write_step({"step": 1, "reward_mean": 0.5, "phase_seconds": {"train": 1.0}, "gpu/policy0/mem_peak_gib": 3.0})
    sink.close()
    assert written == [{"ppo/reward_mean": 0.5, "gpu/policy0/mem_peak_gib": 3.0, "phase_seconds/train": 1.0}]
    assert [g.name for g in fake_gauges] == ["fgrlhf_ppo_step", "fgrlhf_ppo_reward_mean"]


def test_supervised_tensorboard_tags():
    from fgrlhf.trainers.supervised import _scalars

    record = {"step": 3, "loss": 0.5, "eval_accuracy": 0.75, "gpu/learner1/util_pct": 30.0}
    assert _scalars(record) == {"train/loss": 0.5, "eval/accuracy": 0.75, "gpu/learner1/util_pct": 30.0}
