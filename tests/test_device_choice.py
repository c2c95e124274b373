"""Which device an actor computes on (issue 20, item 1), on a CPU machine with GPUs declared to Ray.

Ray >= 2.5x leaves ``CUDA_VISIBLE_DEVICES`` as it is for an actor with ``num_gpus=0``, so on a GPU host such an
actor sees every GPU. The device must come from the GPUs Ray assigned (``ray.get_gpu_ids()``): a ``num_gpus=0``
actor computes on the CPU and joins process groups over gloo. Where the GPU host is simulated, each actor's
process is told CUDA works (``torch.cuda.is_available``, all the decision reads of torch) and is started with
``CUDA_VISIBLE_DEVICES`` naming two GPUs, as it would inherit on a real host.
"""

import pytest
import torch

pytestmark = pytest.mark.slow

# An actor started as on a GPU host: it inherits CUDA_VISIBLE_DEVICES naming every GPU, and CUDA "works".
GPU_HOST = {"env_vars": {"CUDA_VISIBLE_DEVICES": "0,1", "FGRLHF_TEST_PRETEND_CUDA": "1"}}


@pytest.fixture(scope="module")
def fake_gpu_ray():
    """A local Ray told the machine has 2 GPUs (it has none); this module's own instance."""
    import ray

    from fgrlhf.runtime.distributed import init_local_ray

    def pretend_cuda_works() -> None:
        # Ray's worker_process_setup_hook (job-wide; a local function travels by value): a process started
        # with FGRLHF_TEST_PRETEND_CUDA=1 believes it has CUDA (this CPU build of torch has none).
        import os

        import torch

        if os.environ.get("FGRLHF_TEST_PRETEND_CUDA") == "1":
            torch.cuda.is_available = lambda: True

    if ray.is_initialized():
        ray.shutdown()
    init_local_ray(num_cpus=2, num_gpus=2, runtime_env={"worker_process_setup_hook": pretend_cuda_works})
    yield ray
    ray.shutdown()


class Probe:
    def decide(self) -> dict:
        import os

        import ray

        from fgrlhf.runtime.distributed import bind_device, choose_device, resolve_backend

        seen = {"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "ray_gpus": [str(i) for i in ray.get_gpu_ids()]}
        device = choose_device()
        seen.update(device=str(device), backend=resolve_backend("auto", device))
        if device.type == "cpu":
            bind_device()
            seen.update(visible_after=os.environ.get("CUDA_VISIBLE_DEVICES"), cuda=torch.cuda.is_available())
        return seen


def test_a_cpu_actor_on_a_gpu_host_chooses_cpu_and_gloo(fake_gpu_ray):
    ray = fake_gpu_ray
    cpu = ray.remote(Probe).options(num_cpus=0.25, num_gpus=0, runtime_env=GPU_HOST).remote()
    gpu = ray.remote(Probe).options(num_cpus=0.25, num_gpus=1, runtime_env=GPU_HOST).remote()
    try:
        cpu_seen, gpu_seen = ray.get([cpu.decide.remote(), gpu.decide.remote()])
    finally:
        ray.kill(cpu)
        ray.kill(gpu)
    # Ray left every GPU visible to the num_gpus=0 actor: CUDA alone would have put it on GPU 0 with NCCL.
    assert cpu_seen["visible"] == "0,1" and cpu_seen["ray_gpus"] == []
    assert (cpu_seen["device"], cpu_seen["backend"]) == ("cpu", "gloo")
    # Bound to the CPU, the process hides the GPUs from everything else in it (DeepSpeed asks torch.cuda).
    assert cpu_seen["visible_after"] == ""
    # An actor Ray gave a GPU sees that GPU alone, as its device 0, and NCCL.
    assert gpu_seen["visible"] == gpu_seen["ray_gpus"][0] and len(gpu_seen["ray_gpus"]) == 1
    assert (gpu_seen["device"], gpu_seen["backend"]) == ("cuda:0", "nccl")


def test_an_actor_given_a_gpu_without_cuda_fails_clearly(fake_gpu_ray):
    ray = fake_gpu_ray
    gpu = ray.remote(Probe).options(num_cpus=0.25, num_gpus=1).remote()  # torch's real answer: no CUDA
    try:
        with pytest.raises(ray.exceptions.RayTaskError, match=r"Ray assigned GPU\(s\) .* torch sees no CUDA device"):
            ray.get(gpu.decide.remote())
    finally:
        ray.kill(gpu)


def test_nccl_on_a_cpu_rank_is_an_error():
    from fgrlhf.runtime.distributed import resolve_backend

    assert resolve_backend("gloo", torch.device("cuda", 0)) == "gloo"
    with pytest.raises(ValueError, match="backend=nccl, but this rank has no GPU"):
        resolve_backend("nccl", torch.device("cpu"))


def test_cpu_roles_on_a_gpu_host_compute_on_cpu(fake_gpu_ray):
    """The reference, the HF rollout and a DeepSpeed learner rank with num_gpus=0, each on a host whose GPUs
    they can all see: they load and run on the CPU, the learner's group is gloo and the push would be too."""
    ray = fake_gpu_ray
    from fgrlhf.config import DeepSpeedConfig, ModelConfig
    from fgrlhf.workers.learner_worker import PolicyLearner
    from fgrlhf.workers.reference_worker import ReferenceWorker
    from fgrlhf.workers.rollout_worker import RolloutWorker

    options = {"num_cpus": 0.25, "num_gpus": 0, "runtime_env": GPU_HOST}
    ds = DeepSpeedConfig(world_size=1, micro_batch_size=1, num_cpus_per_rank=0.25, timeout_s=123)
    learner = ray.remote(PolicyLearner).options(**options).remote(0, 1, ds, ModelConfig(seed=0))
    reference = ray.remote(ReferenceWorker).options(**options).remote(ModelConfig(seed=0), 2)
    rollout = ray.remote(RolloutWorker).options(**options).remote("hf", ModelConfig(seed=0))
    try:
        addr, port = ray.get(learner.rendezvous_address.remote())
        ray.get([learner.setup.remote(addr, port), reference.ready.remote(), rollout.ready.remote()])

        def learner_state(worker):
            import torch.distributed as dist

            group = dist.distributed_c10d._get_default_group()._get_backend(torch.device("cpu"))
            timeout = group.options._timeout.total_seconds()
            return str(worker.engine.device), dist.get_backend(), timeout, torch.cuda.is_available()

        # CUDA "works" in the process, yet the rank is on the CPU with gloo, under its configured timeout.
        assert ray.get(learner.__ray_call__.remote(learner_state)) == ("cpu", "gloo", 123, True)
        assert ray.get([learner.sees_cuda.remote(), rollout.sees_cuda.remote()]) == [False, False]
        assert ray.get(reference.__ray_call__.remote(lambda w: str(next(w.model.parameters()).device))) == "cpu"
        assert ray.get(rollout.__ray_call__.remote(lambda w: str(next(w.engine.model.parameters()).device))) == "cpu"
        logprobs = ray.get(reference.logprobs.remote([[1, 2, 3]], [[4, 5]]))
        assert logprobs.shape == (1, 2) and bool(torch.isfinite(logprobs).all())
    finally:
        ray.get(learner.close.remote())
        for actor in (learner, reference, rollout):
            ray.kill(actor)
