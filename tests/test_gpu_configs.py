"""The paper's GPU configs (configs/*-llama7b-8xa100.yaml) take every path from one place, and the
``${ENV}`` expansion of config files that makes that possible."""

from pathlib import Path

import pytest
from pydantic import Field

from fgrlhf.config import ConfigError, ModelConfig, StrictModel, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGES = {
    "rm-token-llama7b-8xa100.yaml": "rm",
    "rm-sequence-llama7b-8xa100.yaml": "rm",
    "ppo-llama7b-8xa100.yaml": "ppo",
    "figa-llama7b-8xa100.yaml": "figa",
}


class Paths(StrictModel):
    model: ModelConfig = Field(default_factory=ModelConfig)
    files: list[str] = Field(default_factory=list)


def test_env_references_expand_in_string_values(tmp_path, monkeypatch):
    monkeypatch.setenv("FGRLHF_TEST_ROOT", "/shared")
    monkeypatch.delenv("FGRLHF_TEST_UNSET", raising=False)
    path = tmp_path / "c.yaml"
    # A comment naming ${FGRLHF_TEST_UNSET} is not a value: it is never looked up.
    path.write_text(
        "# ${FGRLHF_TEST_UNSET}\nmodel:\n  name: ${FGRLHF_TEST_ROOT}/models/sft\n  seed: 3\n"
        "files: ['${FGRLHF_TEST_UNSET:-/default}/a', 'x$y']\n",
        encoding="utf-8",
    )
    cfg = load_config(Paths, path)
    assert cfg.model.name == "/shared/models/sft" and cfg.model.seed == 3
    assert cfg.files == ["/default/a", "x$y"]


def test_unset_env_reference_names_file_key_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("FGRLHF_TEST_UNSET", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text("files: [ok, '${FGRLHF_TEST_UNSET}/a']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.yaml: key 'files\[1\]': environment variable FGRLHF_TEST_UNSET"):
        load_config(Paths, path)


def _load(name: str):
    kind = STAGES[name]
    if kind == "ppo":
        from fgrlhf.trainers.ppo.config import PPOTrainConfig as cls
    elif kind == "rm":
        from fgrlhf.reward.train import RMTrainConfig as cls
    else:
        from fgrlhf.figa.config import FigaTrainConfig as cls
    return load_config(cls, CONFIGS / name)


def test_every_paper_stage_has_a_gpu_config_whose_paths_share_one_root(monkeypatch):
    assert set(STAGES) <= {p.name for p in CONFIGS.glob("*-llama7b-8xa100.yaml")}
    monkeypatch.setenv("FGRLHF_CLUSTER_ROOT", "/cluster/x")
    ppo = _load("ppo-llama7b-8xa100.yaml")
    token, sequence, figa = (_load(f"{n}-llama7b-8xa100.yaml") for n in ("rm-token", "rm-sequence", "figa"))
    sft = "/cluster/x/models/alpaca-farm-sft10k"
    assert ppo.policy.name == token.model.name == sequence.model.name == figa.model.name == sft
    assert ppo.reward.model == "/cluster/x/runs/rm-token-llama7b/final"
    assert ppo.prompts.path.startswith("/cluster/x/data/") and figa.data.edits_path.startswith("/cluster/x/data/")
    assert (token.kind, token.loss, sequence.kind, sequence.loss) == ("token", "eq4", "sequence", "bt")
    # Each config's comment says where its RM goes; PPO reads the token RM from there.
    assert "runs/rm-token-llama7b" in (CONFIGS / "rm-token-llama7b-8xa100.yaml").read_text(encoding="utf-8")
    # Without the variable: one documented default root.
    monkeypatch.delenv("FGRLHF_CLUSTER_ROOT")
    assert _load("ppo-llama7b-8xa100.yaml").policy.name == "/nfs/fgrlhf/models/alpaca-farm-sft10k"
