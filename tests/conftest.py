import pytest


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray instance per test module, started as the commands start theirs (bound to 127.0.0.1). Never
    `ray stop`: it would end every Ray process on the machine."""
    ray = pytest.importorskip("ray")
    from fgrlhf.distributed import init_local_ray

    init_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()
