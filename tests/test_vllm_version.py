"""The supported vLLM range (no vLLM needed): the engine warns at start on a release outside it."""

import logging
import sys
import types

import pytest

from fgrlhf.config import ModelConfig
from fgrlhf.workers import vllm_engine
from fgrlhf.workers.vllm_engine import SUPPORTED_VLLM, VLLMEngine, check_vllm_version


@pytest.mark.parametrize("version", ["0.19.1", "0.22.0", "0.32.0+cpu", "0.34.0", "0.20.1.dev3+g0123abc"])
def test_supported_releases_pass_silently(version, caplog):
    assert check_vllm_version(version) is None
    assert not caplog.records


@pytest.mark.parametrize(
    "version,why",
    [
        ("0.11.0", "transformers<5"),
        ("0.19.0", "transformers<5"),
        ("0.35.0", "newer than the releases"),
        ("main", "not a release version"),
    ],
)
def test_releases_outside_the_range_warn(version, why, caplog):
    with caplog.at_level(logging.WARNING, logger=vllm_engine.__name__):
        message = check_vllm_version(version)
    assert message is not None and version in message and why in message
    assert [r.getMessage() for r in caplog.records] == [message]


def test_floor_matches_the_extra():
    from pathlib import Path

    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["optional-dependencies"]["vllm"] == [f"vllm>={vllm_engine.VLLM_FLOOR}"]
    assert "0.19.0" not in SUPPORTED_VLLM and "0.19.1" in SUPPORTED_VLLM


def test_engine_start_warns_on_an_old_vllm(monkeypatch, tmp_path, caplog):
    """The check runs when the engine starts, on the installed module's version (here a stand-in module)."""
    built = {}
    fake = types.ModuleType("vllm")
    fake.__version__ = "0.15.1"
    fake.LLM = lambda **kwargs: built.update(kwargs)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    with caplog.at_level(logging.WARNING, logger=vllm_engine.__name__):
        engine = VLLMEngine(ModelConfig(name=str(tmp_path)))
    engine._scratch.cleanup()
    assert built["model"] == str(tmp_path)
    assert any("vLLM 0.15.1 is outside the supported range" in r.getMessage() for r in caplog.records)
