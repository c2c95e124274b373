"""``fgrlhf figa-data``: rollouts → RM score band → rule editor → edit records that ``fgrlhf figa`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fgrlhf.cli import main as cli_main
from fgrlhf.config import ConfigError, ModelConfig, load_config
from fgrlhf.data.loading import write_jsonl
from fgrlhf.editing.config import RuleEditorConfig
from fgrlhf.editing.editors import RuleEditor
from fgrlhf.envs import in_eval_split
from fgrlhf.figa.collect import collect, load_prompt_list
from fgrlhf.figa.config import FIGA_DATA_RUN, FigaCollectConfig, PromptSourceConfig
from fgrlhf.runtime.run_dir import open_run

RULES = str(Path(__file__).resolve().parents[1] / "configs" / "edit-rules-alpaca-sim.yaml")
PROMPTS = [
    f"Describe the {thing} in two sentences."
    for thing in ("apple", "river", "bridge", "violin", "desert", "glacier", "lantern", "harbor")
]
# What the policy "said" to the first prompts: rule-editor faults (filler, boilerplate, a repeated sentence)
# and one clean answer. The tiny random policy answers the rest.
ROLLOUTS = [
    (
        "Basically, an apple is a round fruit that grows on trees in orchards. It can be red, green or yellow, "
        "and it tastes sweet or tart. I hope this helps!"
    ),
    (
        "A river is a stream of fresh water. A river is a stream of fresh water. It flows from hills and "
        "mountains down to a lake or to the sea, and it shapes the valley around it."
    ),
    (
        "As an AI, I can tell you that a bridge is a structure that crosses a gap such as a river, a road or a "
        "valley. Bridges are built of stone, steel or wood. Feel free to ask more."
    ),
    "A violin is a small wooden string instrument. It is played with a bow and has four strings.",
]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict:
    """A prompts file, a random tiny sequence RM (with the tokenizer) and the YAML config of the run."""
    from fgrlhf.models import load_tokenizer
    from fgrlhf.reward.model import build_reward_model

    root = tmp_path_factory.mktemp("figa_collect")
    write_jsonl(root / "prompts.jsonl", [{"prompt": p} for p in PROMPTS])
    rm_dir = root / "rm"
    build_reward_model("sequence", ModelConfig(name="tiny", seed=1)).save_pretrained(rm_dir, load_tokenizer("tiny"))
    config = {
        "model": {"name": "tiny"},
        "prompts": {"source": str(root / "prompts.jsonl"), "heldout_fraction": None, "shuffle_seed": None, "limit": 6},
        "generation": {"max_prompt_tokens": 32, "max_new_tokens": 64, "temperature": 1.0, "batch_size": 2},
        "save_every": 1,
        "filter": {"rm": str(rm_dir), "max_prompt_tokens": 32, "max_response_tokens": 32},
        "edit": {"editor": "rule", "rule": {"rules": RULES}},
    }
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return {"root": root, "config": root / "config.yaml"}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_prompt_list_excludes_heldout_and_limit_is_a_prefix(tmp_path):
    prompts = [f"Name {i} uses of a paperclip." for i in range(40)]
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in prompts])
    full = load_prompt_list(PromptSourceConfig(source=str(tmp_path / "p.jsonl")))
    held = [p for p in prompts if in_eval_split(p, 0.2)]
    assert held and not set(held) & set(full) and len(full) == len(prompts) - len(held)
    assert full != [p for p in prompts if p in full]  # shuffled
    assert load_prompt_list(PromptSourceConfig(source=str(tmp_path / "p.jsonl"), limit=5)) == full[:5]


@pytest.mark.slow
def test_collect_rollouts_band_and_edits(sources):
    out = sources["root"] / "run"
    out.mkdir()
    write_jsonl(out / "rollouts.jsonl", [{"prompt": p, "response": r} for p, r in zip(PROMPTS, ROLLOUTS)])
    cfg = load_config(FigaCollectConfig, sources["config"])

    # No band: every response is scored, resumed rollouts are kept and only the missing ones generated.
    first = collect(cfg, open_run(out, FIGA_DATA_RUN, cfg, resume=True), progress=False)
    truncated = first["rollouts"].pop("truncated")
    assert first["rollouts"] == {"total": 6, "generated": 2, "resumed": 4, "empty": 0}
    selected = _lines(out / "selected.jsonl")
    assert [r["truncated"] for r in selected[:4]] == [False] * 4  # the hand-written answers are short
    assert truncated == sum(r["truncated"] for r in selected)
    scored = _lines(out / "scored.jsonl")
    assert [r["response"] for r in scored[:4]] == ROLLOUTS
    assert first["filter"]["scored"] == first["filter"]["scored_now"] == len(scored) == 6
    assert first["filter"]["kept"] == 6 and first["filter"]["below_low"] == first["filter"]["above_high"] == 0

    # A band between two scores: nothing is regenerated or rescored, each bound's drops are counted.
    scores = sorted(r["rm_score"] for r in scored)
    low, high = (scores[0] + scores[1]) / 2, (scores[-2] + scores[-1]) / 2
    banded_cfg = cfg.model_copy(update={"filter": cfg.filter.model_copy(update={"low": low, "high": high})})
    banded = collect(banded_cfg, open_run(out, FIGA_DATA_RUN, banded_cfg, resume=True), progress=False)
    assert banded["rollouts"]["generated"] == 0 and banded["filter"]["scored_now"] == 0
    assert (banded["filter"]["below_low"], banded["filter"]["above_high"], banded["filter"]["kept"]) == (1, 1, 4)

    edits = _lines(out / "edits.jsonl")
    assert len(edits) == banded["edit"]["items"] == 4
    assert all(low <= r["rm_score"] <= high for r in edits)
    editor = RuleEditor(RuleEditorConfig(rules=RULES))
    for record in edits:
        fixed = editor.apply(record["original"])
        assert record["edited"] == fixed
        assert record["status"] == ("edited" if fixed != record["original"] else "unchanged")
    kept_faulty = [r for r in scored[:3] if low <= r["rm_score"] <= high]
    assert banded["edited"] == sum(r["status"] == "edited" for r in edits) >= len(kept_faulty)

    # The edits file is FIGA's training data as is.
    from fgrlhf.figa.data import FigaDataConfig, load_pairs

    if banded["edited"]:
        assert len(load_pairs(FigaDataConfig(edits_path=str(out / "edits.jsonl")))) == banded["edited"]


def test_bad_config_errors_name_the_key(sources, capsys):
    out = str(sources["root"] / "bad")
    assert cli_main(["figa-data", "--config", str(sources["config"]), "--out", out, "filter.lowr=1"]) == 2
    assert "unknown key 'filter.lowr'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"filter\.low/filter\.high need filter\.rm"):
        load_config(FigaCollectConfig, sources["config"], ["filter.rm=null", "filter.low=0"])
    with pytest.raises(ConfigError, match=r"filter.low \(2.0\) must not exceed"):
        load_config(FigaCollectConfig, sources["config"], ["filter.low=2.0", "filter.high=1.0"])


@pytest.mark.slow
def test_changed_settings_do_not_extend_existing_rollouts(sources, capsys):
    out = sources["root"] / "changed"
    args = [
        "figa-data",
        "--config",
        str(sources["config"]),
        "--out",
        str(out),
        "--no-progress",
        "prompts.limit=2",
        "filter.rm=null",
    ]
    assert cli_main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rollouts"]["generated"] == 2
    assert cli_main(args + ["generation.max_new_tokens=8"]) == 2
    assert f"{out} already holds a figa-data run (finished); pass --resume" in capsys.readouterr().err
    assert cli_main(args + ["generation.max_new_tokens=8", "--resume"]) == 2
    assert "  generation.max_new_tokens: 64 -> 8" in capsys.readouterr().err
    # A longer prompt list extends the rollouts: only the new prompts are generated.
    assert cli_main(args + ["--resume", "prompts.limit=3"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rollouts"]["generated"] == 1


def test_truncated_rollout_trains_no_eos():
    from fgrlhf.figa.data import build_example
    from fgrlhf.models import load_tokenizer

    tokenizer = load_tokenizer("tiny")
    record = {
        "prompt": "Describe the apple.",
        "original": "Basically, an apple is a round fruit that",
        "edited": "An apple is a round fruit that",
    }
    ended = build_example(tokenizer, record, "chat", 32, 32)
    cut = build_example(tokenizer, {**record, "truncated": True}, "chat", 32, 32)
    eos = tokenizer.eos_token_id
    assert ended["revised_ids"][-1] == eos and ended["positive_mask"][-1]
    assert cut["revised_ids"] == ended["revised_ids"][:-1] and cut["original_ids"] == ended["original_ids"][:-1]
    assert any(cut["positive_mask"]) and eos not in cut["revised_ids"]


@pytest.mark.parametrize("name", ["figa-data-tiny-cpu.yaml", "figa-data-smollm2-cpu.yaml"])
def test_configs_load(name):
    cfg = load_config(FigaCollectConfig, Path(RULES).parent / name)
    assert cfg.edit.editor == "rule" and Path(cfg.edit.rule.rules).name == "edit-rules-alpaca-sim.yaml"
