import pytest


@pytest.fixture(scope="module")
def ray_session():
    """A local Ray instance per test module, started as the commands start theirs (bound to 127.0.0.1). Never
    `ray stop`: it would end every Ray process on the machine."""
    ray = pytest.importorskip("ray")
    from fgrlhf.runtime.distributed import init_local_ray

    init_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture
def one_thread(monkeypatch):
    """OMP_NUM_THREADS=1 for the test and the processes it starts: the machine's few cores are shared."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    """The tiny test model's tokenizer (read-only: shared by every test that asks for it)."""
    from fgrlhf.models import load_tokenizer

    return load_tokenizer("tiny")
