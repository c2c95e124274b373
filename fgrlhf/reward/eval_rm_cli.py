"""Pairwise accuracy of a reward model, with a bootstrap 95% interval, and a token-reward heat map.

  fgrlhf eval-rm --rm DIR --data PAIRS_OR_EDITS.jsonl [--report PATH] [--heatmap OUT.html [--heatmap-k K]]

A pair counts as correct when the RM's sequence score (token RM: mean r_t; sequence RM: the EOS score)
is higher for the chosen response; a tie counts ½. Edit records count edited as chosen. Prints one JSON
line (accuracy, ci_low, ci_high, n, ...) and writes it as a report (default DIR/eval-<data name>.json).
``length_baseline_accuracy`` is the accuracy of "the longer response wins" on the same pairs (ties ½;
``length_baseline`` adds "shorter wins" and both on the pairs of unequal length): the score of an RM that
learned nothing but length.
Two length-bias diagnostics come with it: ``length_correlation`` (Pearson, RM score vs response length
over every scored response) and, for a token RM, ``token_reward_by_position`` (mean r_t per 16-token
bin of response positions); an RM that learned "shorter is better" shows a negative correlation and
token rewards that fall with position.
The heat map shows, for the first K pairs, each response's tokens coloured by the head's output at that
token (green rewarded, red penalised, stronger colour = larger magnitude, value on hover); tokens an edit
changed are underlined. For a sequence RM only the EOS value is its reward.
"""

from __future__ import annotations

import argparse
import html
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fgrlhf.data.schemas import add_field_map_argument

POSITION_BIN = 16  # response tokens per bin of the report's token_reward_by_position


def _cat_padded(*tensors: torch.Tensor) -> torch.Tensor:
    """Right-pad ``[B_i, T_i]`` tensors to one width and stack their rows."""
    width = max(t.size(1) for t in tensors)
    return torch.cat([F.pad(t, (0, width - t.size(1))) for t in tensors])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rm", required=True, help="reward-model directory (train-rm's DIR/final)")
    parser.add_argument("--data", required=True, help="preference pairs (docs/data.md) or fgrlhf edit records")
    add_field_map_argument(parser)
    parser.add_argument("--report", help="JSON report path (default: RM/eval-<data name>.json)")
    parser.add_argument("--heatmap", metavar="OUT.html", help="write a token-reward heat map of the first pairs")
    parser.add_argument("--heatmap-k", type=int, default=20, metavar="K", help="pairs in the heat map (default 20)")
    parser.add_argument("--batch-size", type=int, default=8, help="responses per forward pass")
    parser.add_argument("--max-prompt-tokens", type=int, help="default: the RM's training limit")
    parser.add_argument("--max-response-tokens", type=int, help="default: the RM's training limit")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% interval")


def _color(value: float, scale: float) -> str:
    alpha = min(abs(value) / scale, 1.0) if scale > 0 else 0.0
    rgb = "0, 160, 60" if value >= 0 else "210, 30, 30"
    return f"rgba({rgb}, {alpha:.3f})"


def _tokens_html(tokenizer, ids: list[int], values: list[float], changed: list[bool] | None, scale: float) -> str:
    spans = []
    for i, (token_id, value) in enumerate(zip(ids, values)):
        text = tokenizer.decode([token_id]) if token_id != tokenizer.eos_token_id else "⟨eos⟩"
        style = f"background:{_color(value, scale)}"
        if changed is not None and changed[i]:
            style += ";text-decoration:underline;text-decoration-thickness:2px"
        spans.append(f'<span class="t" style="{style}" title="r = {value:+.4f}">{html.escape(text)}</span>')
    return "".join(spans)


def write_heatmap(
    path: Path, tokenizer, records: list[dict], examples, chosen: dict, rejected: dict, k: int, kind: str
) -> None:
    """A self-contained HTML page: per pair, prompt then chosen | rejected with per-token colours."""
    rows = []
    n = min(k, len(examples))
    scale = max(float(chosen["token"][:n].abs().max()), float(rejected["token"][:n].abs().max()), 1e-8)
    for i in range(n):
        example = examples[i]
        cells = []
        for side, ids, scores, changed in (
            ("chosen", example.chosen_ids, chosen, example.chosen_changed),
            ("rejected", example.rejected_ids, rejected, example.rejected_changed),
        ):
            values = scores["token"][i, : len(ids)].tolist()
            cells.append(
                f'<td><div class="h">{side}: R = {float(scores["sequence"][i]):+.4f}</div>'
                f"{_tokens_html(tokenizer, ids, values, changed, scale)}</td>"
            )
        c, r = float(chosen["sequence"][i]), float(rejected["sequence"][i])
        verdict = "correct" if c > r else "tie" if c == r else "wrong"
        rows.append(
            f'<tr><td colspan="2" class="p">#{i} ({verdict}) {html.escape(records[i]["prompt"])}</td></tr>'
            f"<tr>{''.join(cells)}</tr>"
        )
    note = (
        "r_t of the token RM"
        if kind == "token"
        else "head output per position; a sequence RM's reward is the EOS value"
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>fgrlhf token rewards</title><style>
body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse;width:100%;table-layout:fixed}}
td{{vertical-align:top;border:1px solid #ccc;padding:6px;white-space:pre-wrap;font-family:monospace}}
td.p{{background:#f3f3f3;font-family:sans-serif}} .h{{font-family:sans-serif;font-weight:bold;margin-bottom:4px}}
.t{{border-radius:2px}}</style></head><body>
<h2>{html.escape(kind)} reward model: {note}</h2>
<p>Green = rewarded, red = penalised; opacity ∝ |value| (full at {scale:.4f}); hover for the value.
Underlined: tokens the edit changed (U1).</p>
<table><tr><th>chosen</th><th>rejected</th></tr>{"".join(rows)}</table></body></html>
"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")


def main(args: argparse.Namespace) -> int:
    from fgrlhf.algorithms.rm_losses import (
        bootstrap_ci,
        length_baseline,
        mean_by_position,
        pairwise_accuracy,
        pearson_correlation,
    )
    from fgrlhf.models import load_tokenizer
    from fgrlhf.reward.data import encode_pairs, load_preference_records
    from fgrlhf.reward.model import load_reward_model, read_reward_info
    from fgrlhf.runtime.preflight import check_data, check_reward_model

    check_reward_model(args.rm, "--rm")  # before torch loads anything
    check_data(args.data, "--data")
    began = time.perf_counter()
    rm_dir = Path(args.rm)
    info = read_reward_info(rm_dir)
    records, from_edits = load_preference_records(args.data, args.field_map)
    tokenizer = load_tokenizer(str(rm_dir))
    examples = encode_pairs(
        records,
        tokenizer,
        info.get("prompt_format", "chat"),
        args.max_prompt_tokens or info.get("max_prompt_tokens", 192),
        args.max_response_tokens or info.get("max_response_tokens", 300),
        with_edit_masks=from_edits,
    )
    model = load_reward_model(rm_dir).eval()
    if torch.cuda.is_available():
        model = model.cuda()
    prompts = [e.prompt_ids for e in examples]
    chosen = model.score(prompts, [e.chosen_ids for e in examples], tokenizer.pad_token_id, args.batch_size)
    rejected = model.score(prompts, [e.rejected_ids for e in examples], tokenizer.pad_token_id, args.batch_size)
    per_pair = torch.stack([pairwise_accuracy(c, r) for c, r in zip(chosen["sequence"], rejected["sequence"])])
    masks = _cat_padded(chosen["response_mask"], rejected["response_mask"])  # every scored response
    low, high = bootstrap_ci(per_pair, n_resamples=args.bootstrap)

    # What length alone scores on these pairs (full responses, RM tokenizer): an RM near it may have
    # learned only length.
    def full_lengths(side: str) -> torch.Tensor:
        ids = tokenizer([r[side] for r in records], add_special_tokens=False)["input_ids"]
        return torch.tensor([len(row) for row in ids])

    by_length = length_baseline(full_lengths("chosen"), full_lengths("rejected"))
    result = {
        "accuracy": float(per_pair.double().mean()),
        "ci_low": low,
        "ci_high": high,
        "n": len(examples),
        "margin": float((chosen["sequence"] - rejected["sequence"]).mean()),
        # Length bias: correlation of the RM's score with response length over every scored response.
        "length_correlation": pearson_correlation(torch.cat([chosen["sequence"], rejected["sequence"]]), masks.sum(-1)),
        "length_baseline_accuracy": by_length["longer_wins"],
        "length_baseline": {"rule": "longer response wins, ties count half", "unit": "response tokens", **by_length},
        "kind": info["kind"],
        "rm": str(rm_dir),
        "data": str(args.data),
        "data_kind": "edit records" if from_edits else "pairs",
        "seconds": round(time.perf_counter() - began, 2),
    }
    if info["kind"] == "token":
        tokens = _cat_padded(chosen["token"], rejected["token"])
        result["token_reward_by_position"] = {
            "bin_tokens": POSITION_BIN,
            "mean": mean_by_position(tokens, masks, POSITION_BIN),
        }
    report = Path(args.report) if args.report else rm_dir / f"eval-{Path(args.data).stem}.json"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    if args.heatmap:
        write_heatmap(Path(args.heatmap), tokenizer, records, examples, chosen, rejected, args.heatmap_k, info["kind"])
    print(json.dumps(result))
    return 0
