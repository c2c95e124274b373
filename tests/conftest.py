import pytest


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray instance per test module (never `ray stop`: it would end every Ray process on the machine)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()
