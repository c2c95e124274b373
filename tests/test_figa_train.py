"""FIGA: token masks of real edit records, the SFT special case, and an end-to-end CLI run with resume."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from fgrlhf.config import ModelConfig
from fgrlhf.figa.data import build_example, collate
from fgrlhf.figa.task import FigaLossConfig, FigaTask
from fgrlhf.models import load_tokenizer
from tests.helpers import read_metrics

# Real rule-editor edits (configs/edit-rules-alpaca-sim.yaml: filler adverb, "I hope this helps" tail).
RECORDS = [
    {
        "prompt": "Describe apples.",
        "original": "Basically, apples are red fruits.",
        "edited": "Apples are red fruits.",
        "status": "edited",
    },
    {
        "prompt": "Describe apples.",
        "original": "Apples are red fruits. I hope this helps!",
        "edited": "Apples are red or green fruits.",
        "status": "edited",
    },
]


def _marked(tokenizer, ids, mask):
    return [tokenizer.decode([i]) for i, m in zip(ids, mask) if m]


def test_masks_match_hand_checked_positions(tokenizer):
    deleted = build_example(tokenizer, RECORDS[0], "chat", 64, 64)
    # "Basically, apples" -> "Apples": the tokens differ ("App"+"les" vs " apples"), so they are substituted.
    assert [tokenizer.decode([i]) for i in deleted["revised_ids"]] == [
        "App",
        "les",
        " are",
        " red",
        " fruits",
        ".",
        "<|im_end|>",
    ]
    assert deleted["positive_mask"] == [True, True, False, False, False, False, True]  # EOS is positive
    assert deleted["negative_mask"] == [True, True, True, False, False, False, False, False]  # EOS never negative

    mixed = build_example(tokenizer, RECORDS[1], "chat", 64, 64)
    assert _marked(tokenizer, mixed["revised_ids"], mixed["positive_mask"]) == [" or", " green", "<|im_end|>"]
    assert _marked(tokenizer, mixed["original_ids"], mixed["negative_mask"]) == [" I", " hope", " this", " helps", "!"]
    assert mixed["positive_mask"].index(True) == 4 and mixed["negative_mask"].index(True) == 6


def test_collate_places_masks_on_response_tokens(tokenizer):
    examples = [build_example(tokenizer, r, "chat", 64, 64) for r in RECORDS]
    batch = collate(examples, tokenizer.pad_token_id)
    for side, key in (("revised", "revised_ids"), ("original", "original_ids")):
        for row, example in enumerate(examples):
            n = len(example[key])
            index = batch[f"{side}_response_index"][row, :n]
            # The response tokens sit right after the prompt inside the model input.
            assert batch[f"{side}_input_ids"][row, index].tolist() == example[key]
            assert batch[f"{side}_response_mask"][row].sum() == n
    assert batch["positive_mask"][1].tolist() == [float(m) for m in examples[1]["positive_mask"]]
    assert batch["negative_mask"][0].tolist()[:8] == [float(m) for m in examples[0]["negative_mask"]]


def test_sft_config_is_mean_ce_over_revised_tokens(tokenizer):
    model_cfg = ModelConfig(name="tiny")
    task = FigaTask(model_cfg, FigaLossConfig(alpha=1.0, beta=0.0, gamma=1.0), tokenizer.pad_token_id)
    model = task.build_model()
    examples = task.prepare(RECORDS)
    batch = task.collate(examples)
    loss, metrics = task.loss(model, batch)
    # Independent reference: HF's own LM loss with labels only on the revised response tokens (EOS included).
    labels = torch.full_like(batch["revised_input_ids"], -100)
    for row, example in enumerate(examples):
        start = len(example["prompt_ids"])
        labels[row, start : start + len(example["revised_ids"])] = torch.tensor(example["revised_ids"])
    reference = model(
        input_ids=batch["revised_input_ids"], attention_mask=batch["revised_attention_mask"], labels=labels
    ).loss
    assert torch.allclose(loss, reference, atol=1e-5)
    assert metrics["weighted_tokens"] == sum(len(e["revised_ids"]) for e in examples) / len(examples)

    figa = FigaTask(model_cfg, FigaLossConfig(), tokenizer.pad_token_id)
    figa_value, figa_metrics = figa.loss(model, batch)
    assert figa_metrics["weighted_tokens"] < metrics["weighted_tokens"]  # only positives (+ confident negatives)
    assert not torch.allclose(figa_value, reference)


# --- end to end: the CLI on Ray, checkpoints, resume, export, gold evaluation --------------------------------
FIXTURE = Path(__file__).parent / "fixtures" / "figa_edits_tiny.jsonl"
CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.slow
def test_figa_cli_trains_exports_resumes_and_evaluates(ray_session, tmp_path):
    from fgrlhf.cli import main
    from fgrlhf.models import load_causal_lm

    run = tmp_path / "figa"
    args = [
        "figa",
        "--config",
        str(CONFIGS / "figa-tiny-cpu.yaml"),
        "--out",
        str(run),
        f"data.edits_path={FIXTURE}",
        "epochs=2",
        "save_every=2",
        "eval.gold_reward=fgrlhf.envs.alpaca_sim:gold_reward",
        "eval.limit=3",
        "eval.generation.max_new_tokens=6",
        "eval.generation.max_prompt_tokens=64",
    ]
    assert main(args) == 0
    first = read_metrics(run)
    assert [m["step"] for m in first] == [1, 2, 3, 4]  # 8 pairs (the unchanged record is dropped) / batch 4
    assert all(math.isfinite(m["loss"]) for m in first)
    assert first[-1]["loss"] < first[0]["loss"] and first[-1]["ce_revised"] < first[0]["ce_revised"]
    assert (run / "checkpoints" / "step_2" / "trainer_state.json").is_file()

    model = load_causal_lm(ModelConfig(name=str(run / "final")))
    assert load_tokenizer(str(run / "final")).eos_token == "<|im_end|>"
    exported = model.state_dict()["model.embed_tokens.weight"]
    assert not torch.equal(exported, load_causal_lm(ModelConfig(name="tiny")).state_dict()["model.embed_tokens.weight"])

    report = json.loads((run / "eval.json").read_text())
    assert [row["policy"] for row in report["summary"]] == ["before", "after"]
    assert all(row["n"] == 3 and 0.0 <= row["gold_mean"] <= 1.0 for row in report["summary"])
    assert report["gold_delta"] == pytest.approx(report["summary"][1]["gold_mean"] - report["summary"][0]["gold_mean"])

    # A finished run is not retrained on --resume.
    assert main(args + ["--resume"]) == 0
    assert read_metrics(run) == first and json.loads((run / "run.json").read_text())["status"] == "finished"
    # A crash after step 2 (status running, no final/): resume redoes steps 3-4 from the step-2 checkpoint with
    # the same data and weights.
    shutil.rmtree(run / "final")
    manifest = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**manifest, "status": "running"}))
    assert main(args + ["--resume"]) == 0
    resumed = read_metrics(run)
    assert [m["step"] for m in resumed] == [1, 2, 3, 4]
    for before, after in zip(first[2:], resumed[2:]):
        assert after["loss"] == pytest.approx(before["loss"], rel=1e-5)
    assert torch.allclose(
        load_causal_lm(ModelConfig(name=str(run / "final"))).state_dict()["model.embed_tokens.weight"],
        exported,
        atol=1e-6,
    )


@pytest.mark.parametrize("name", ["figa-tiny-cpu.yaml", "sft-tiny-cpu.yaml", "figa-smollm2-cpu.yaml"])
def test_configs_load(name):
    from fgrlhf.config import load_config
    from fgrlhf.figa.config import FigaTrainConfig

    cfg = load_config(FigaTrainConfig, CONFIGS / name)
    if name.startswith("sft"):
        assert (cfg.figa.alpha, cfg.figa.beta, cfg.figa.gamma) == (1.0, 0.0, 1.0)
