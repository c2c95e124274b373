"""Reward models: which position each reward is read at (prompt, EOS, padding), U1 masks in the batch
layout, what each loss sees, and save -> load in a fresh process."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from fgrlhf.config import ModelConfig
from fgrlhf.reward.data import collate_pairs, encode_pairs, load_preference_records
from fgrlhf.reward.model import (
    SequenceRewardModel,
    TokenRewardModel,
    build_reward_model,
    per_position_scores,
)
from fgrlhf.reward.task import RewardModelTask

PROMPTS = [[5, 6, 7], [8, 9]]
RESPONSES = [[11, 12, 13, 2], [14, 2]]  # 2 = EOS of the tiny tokenizer


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {kind: build_reward_model(kind, ModelConfig()).eval() for kind in ("token", "sequence")}


def _full_sequence_scores(model, prompt, response):
    ids = torch.tensor([prompt + response])
    return per_position_scores(model, ids, torch.ones_like(ids))[0]


def test_token_rewards_are_read_at_each_response_tokens_own_position(models, tokenizer):
    model = models["token"]
    assert RESPONSES[0][-1] == RESPONSES[1][-1] == tokenizer.eos_token_id
    out = model.score(PROMPTS, RESPONSES, tokenizer.pad_token_id)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        alone = _full_sequence_scores(model, prompt, response)
        # r_t = head(h at prompt_len + t): prompt positions are never read, EOS is (it is a response token).
        torch.testing.assert_close(out["token"][row, : len(response)], alone[len(prompt) :], atol=1e-5, rtol=0)
        assert out["response_mask"][row].tolist() == [1.0] * len(response) + [0.0] * (4 - len(response))
        assert out["token"][row, len(response) :].abs().sum() == 0  # padding is zeroed, not scored
        assert out["sequence"][row].item() == pytest.approx(alone[len(prompt) :].mean().item(), abs=1e-5)


def test_right_padding_does_not_change_scores(models, tokenizer):
    for model in models.values():
        batched = model.score(PROMPTS, RESPONSES, tokenizer.pad_token_id)
        alone = model.score(PROMPTS[1:], RESPONSES[1:], tokenizer.pad_token_id)
        torch.testing.assert_close(batched["sequence"][1:], alone["sequence"], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched["token"][1, :2], alone["token"][0], atol=1e-5, rtol=0)


def test_sequence_rm_reads_the_eos_position(models, tokenizer):
    model = models["sequence"]
    out = model.score(PROMPTS, RESPONSES, tokenizer.pad_token_id)
    for row, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES)):
        alone = _full_sequence_scores(model, prompt, response)
        assert out["sequence"][row].item() == pytest.approx(alone[-1].item(), abs=1e-5)


def test_token_reward_sees_its_own_token_but_not_later_ones(models, tokenizer):
    model = models["token"]
    base = model.score([PROMPTS[0]], [RESPONSES[0]], tokenizer.pad_token_id)["token"][0]
    changed = model.score([PROMPTS[0]], [[11, 99, 13, 2]], tokenizer.pad_token_id)["token"][0]
    assert base[0] == pytest.approx(changed[0].item(), abs=1e-6)  # causal: r_0 cannot see token 1
    assert abs(base[1] - changed[1]) > 1e-6  # r_1 is read after reading token 1 itself


@pytest.mark.slow
def test_save_then_load_in_a_fresh_process_scores_identically(models, tokenizer, tmp_path):
    for kind, model in models.items():
        directory = tmp_path / kind
        model.save_pretrained(directory, tokenizer)
        section = json.loads((directory / "config.json").read_text())["fgrlhf_reward"]
        assert section["kind"] == kind and section["base_model"] == "tiny"
        expected = model.score(PROMPTS, RESPONSES, tokenizer.pad_token_id)
        script = (
            "import json, sys; from fgrlhf.reward.model import load_reward_model; "
            "from fgrlhf.models import load_tokenizer; d = sys.argv[1]; "
            "m = load_reward_model(d).eval(); t = load_tokenizer(d); "
            f"out = m.score({PROMPTS}, {RESPONSES}, t.pad_token_id); "
            "print(json.dumps({'kind': m.kind, 'token': out['token'].tolist(), 'sequence': out['sequence'].tolist()}))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", script, str(directory)],
            capture_output=True,
            text=True,
            timeout=300,
            env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        loaded = json.loads(proc.stdout.strip().splitlines()[-1])
        assert loaded["kind"] == kind
        torch.testing.assert_close(torch.tensor(loaded["token"]), expected["token"], atol=1e-6, rtol=0)
        torch.testing.assert_close(torch.tensor(loaded["sequence"]), expected["sequence"], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="holds a token reward model"):
        SequenceRewardModel.from_pretrained(tmp_path / "token")
    assert isinstance(TokenRewardModel.from_pretrained(tmp_path / "token"), TokenRewardModel)


EDITS = [
    {
        "prompt": "Describe the sky.",
        "original": "The sky is green today.",
        "edited": "The sky is blue today.",
        "status": "edited",
    },
    {
        "prompt": "Describe grass.",
        "original": "Grass is green.",
        "edited": "Grass is green and soft.",
        "status": "edited",
    },
    {"prompt": "Not used.", "original": "x", "edited": "", "status": "failed"},
]


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_edit_records_give_u1_masks_in_the_response_layout(tokenizer, tmp_path):
    records, from_edits = load_preference_records(_write(tmp_path / "edits.jsonl", EDITS))
    assert from_edits and len(records) == 2  # status "failed" is not training data
    examples = encode_pairs(records, tokenizer, "chat", 64, 64, with_edit_masks=True)
    sky, grass = examples
    changed = [tokenizer.decode([t]) for t, c in zip(sky.chosen_ids, sky.chosen_changed) if c]
    assert changed == [" blue"]
    assert [tokenizer.decode([t]) for t, c in zip(sky.rejected_ids, sky.rejected_changed) if c] == [" green"]
    assert not sky.chosen_changed[-1] and sky.chosen_ids[-1] == tokenizer.eos_token_id  # EOS is shared
    assert not any(grass.rejected_changed)  # a pure insertion leaves the original's U1 empty
    batch = collate_pairs(examples, tokenizer.pad_token_id)
    assert batch["input_ids"].shape[0] == 4  # chosen rows, then rejected rows
    width = batch["response_mask"].shape[1]
    for row, (ids, mask) in enumerate(
        [
            (sky.chosen_ids, sky.chosen_changed),
            (grass.chosen_ids, grass.chosen_changed),
            (sky.rejected_ids, sky.rejected_changed),
            (grass.rejected_ids, grass.rejected_changed),
        ]
    ):
        assert batch["changed"][row].tolist() == [float(m) for m in mask] + [0.0] * (width - len(mask))
        positions = batch["response_index"][row, : len(ids)]
        assert batch["input_ids"][row, positions].tolist() == ids  # index points at the response tokens
    pairs, from_edits = load_preference_records(
        _write(tmp_path / "pairs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    )
    assert not from_edits and "changed" not in collate_pairs(
        encode_pairs(pairs, tokenizer, "chat", 64, 64, with_edit_masks=False), tokenizer.pad_token_id
    )


class _FixedScores(torch.nn.Module):
    """Stands in for an RM: returns given per-position scores, and reads sequences like the real kind."""

    def __init__(self, scores, kind):
        super().__init__()
        self.scores, self.reader = scores, (TokenRewardModel if kind == "token" else SequenceRewardModel)

    def forward(self, input_ids, attention_mask):
        return self.scores.clone()

    def sequence_scores(self, token_scores, response_mask):
        return self.reader.sequence_scores(self, token_scores, response_mask)


def test_each_loss_reads_the_positions_it_should(tokenizer):
    records = [
        {"prompt": "Describe the sky.", "chosen": "The sky is blue today.", "rejected": "The sky is green today."}
    ]
    edits = encode_pairs(records, tokenizer, "chat", 64, 64, with_edit_masks=True)
    batch = collate_pairs(edits, tokenizer.pad_token_id)
    prompt_len, n = len(edits[0].prompt_ids), len(edits[0].chosen_ids)
    changed_at = edits[0].chosen_changed.index(True)
    base = torch.zeros(batch["input_ids"].shape)
    losses = {}
    for name, position in (
        ("prompt", 0),
        ("unchanged", prompt_len),
        ("changed", prompt_len + changed_at),
        ("eos", prompt_len + n - 1),
    ):
        scores = base.clone()
        scores[0, position] = 2.0  # reward only the chosen row, at one position
        for kind, loss in (("token", "eq4"), ("token", "eq3"), ("sequence", "bt")):
            task = RewardModelTask(kind, loss, ModelConfig(), 64, 64, from_edits=True)
            value, _ = task.loss(_FixedScores(scores, kind), batch)
            losses[name, loss] = value.item()
    log2 = math.log(2)
    assert all(losses["prompt", loss] == pytest.approx(log2) for loss in ("eq3", "eq4", "bt"))  # prompt unread
    assert losses["unchanged", "eq4"] == pytest.approx(log2)  # Eq. 4 ignores U0 ...
    assert losses["unchanged", "eq3"] < log2  # ... Eq. 3 does not
    assert losses["changed", "eq4"] == pytest.approx(-math.log(torch.sigmoid(torch.tensor(2.0 / n)).item()))
    assert losses["unchanged", "bt"] == pytest.approx(log2) and losses["eos", "bt"] < log2  # BT reads EOS only
    with pytest.raises(ValueError, match="sequence reward model trains with loss bt"):
        RewardModelTask("sequence", "eq3", ModelConfig(), 64, 64, from_edits=False)
