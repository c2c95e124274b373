"""FIGA's data path (``fgrlhf figa-data``, :mod:`fgrlhf.figa.figa_data_cli`): prompts -> policy rollouts -> reward-model
score band -> editor -> edit records, each stage resumable."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fgrlhf.figa.config import FigaCollectConfig, PromptSourceConfig, RMFilterConfig
    from fgrlhf.runtime.run_dir import RunDir


def load_prompt_list(cfg: PromptSourceConfig) -> list[str]:
    """The source's prompts outside the held-out split, shuffled (the first N are the same for every limit)."""
    from fgrlhf.data.loading import DataError, load_prompts
    from fgrlhf.envs import in_eval_split

    prompts = [r["prompt"] for r in load_prompts(cfg.source)]
    if cfg.heldout_fraction is not None:
        prompts = [p for p in prompts if not in_eval_split(p, cfg.heldout_fraction)]
    if not prompts:
        raise DataError(f"{cfg.source}: no prompt outside the held-out fraction {cfg.heldout_fraction}")
    if cfg.shuffle_seed is not None:
        random.Random(cfg.shuffle_seed).shuffle(prompts)
    return prompts[: cfg.limit] if cfg.limit else prompts


def resume(path: Path, planned: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """The records already in ``path``, checked to be the start of ``planned`` (same ``keys``)."""
    from fgrlhf.data.loading import DataError, load_records

    if not path.exists():
        return []
    done = load_records(path, keys, allow_empty=keys)[: len(planned)]
    for index, (old, new) in enumerate(zip(done, planned)):
        if any(old[k] != new[k] for k in keys):
            raise DataError(
                f"{path}:{index + 1}: does not match this run's input there (fields {keys}); "
                "use another --out or delete that file"
            )
    return done


def rollouts_stage(cfg: FigaCollectConfig, prompts: list[str], out: Path) -> tuple[list[dict], int]:
    """``{prompt, response}`` per prompt (resumed, then generated and saved chunk by chunk); and how many
    were generated now."""
    from fgrlhf.data.loading import write_jsonl
    from fgrlhf.generation import generate_batched

    path = out / "rollouts.jsonl"
    planned = [{"prompt": p} for p in prompts]
    done = resume(path, planned, ("prompt",))
    resumed = len(done)
    step = cfg.save_every * cfg.generation.batch_size
    for start in range(len(done), len(prompts), step):
        chunk = prompts[start : start + step]
        # Seeds follow the global batch offset, as if generated in one call.
        gen = cfg.generation.model_copy(update={"seed": cfg.generation.seed + start})
        responses = generate_batched(cfg.model, chunk, gen, desc=f"rollouts {start}+{len(chunk)}/{len(prompts)}")
        done += [{"prompt": p, "response": r} for p, r in zip(chunk, responses)]
        write_jsonl(path, done)
    return done, len(done) - resumed


def mark_truncated(rollouts: list[dict], cfg: FigaCollectConfig) -> None:
    """``truncated``: the response used up ``generation.max_new_tokens`` (re-tokenized; one token of slack for
    the stripped whitespace), so it was cut, not ended; FIGA then trains no EOS after it."""
    from fgrlhf.models import load_tokenizer

    lengths = [
        len(ids)
        for ids in load_tokenizer(cfg.model.name)([r["response"] for r in rollouts], add_special_tokens=False)[
            "input_ids"
        ]
    ]
    for record, length in zip(rollouts, lengths):
        record["truncated"] = length >= cfg.generation.max_new_tokens - 1


def rm_scores(cfg: RMFilterConfig, records: list[dict]) -> list[float]:
    """The sequence score of ``cfg.rm`` (token RM: mean r_t; sequence RM: head at EOS) of each response."""
    from fgrlhf.models import load_tokenizer
    from fgrlhf.reward.model import load_reward_model
    from fgrlhf.tokenization import encode_prompt, encode_response, format_prompt

    assert cfg.rm is not None, "scoring needs filter.rm"  # score_stage runs only when it is set
    model = load_reward_model(cfg.rm).eval()
    # An RM saved without its tokenizer (e.g. a random test RM) reads its base model's.
    tokenizer = load_tokenizer(
        cfg.rm if (Path(cfg.rm) / "tokenizer_config.json").exists() else model.info["base_model"]
    )
    prompt_format = model.info.get("prompt_format", "chat")
    prompt_ids = [
        encode_prompt(tokenizer, format_prompt(tokenizer, r["prompt"], prompt_format), cfg.max_prompt_tokens)
        for r in records
    ]
    response_ids = [encode_response(tokenizer, r["response"], cfg.max_response_tokens) for r in records]
    scores = model.score(prompt_ids, response_ids, tokenizer.pad_token_id, cfg.micro_batch_size)
    return scores["sequence"].tolist()


def score_stage(cfg: RMFilterConfig, rollouts: list[dict], out: Path) -> tuple[list[dict], int]:
    """``rollouts`` with ``rm_score`` (resumed, then the rest scored); and how many were scored now."""
    from fgrlhf.data.loading import write_jsonl

    path = out / "scored.jsonl"
    done = resume(path, rollouts, ("prompt", "response"))
    todo = rollouts[len(done) :]
    if todo:
        done += [{**r, "rm_score": s} for r, s in zip(todo, rm_scores(cfg, todo))]
        write_jsonl(path, done)
    return done, len(todo)


def select_band(records: list[dict], low: float | None, high: float | None) -> tuple[list[dict], int, int]:
    """``(kept, dropped below low, dropped above high)``; a missing bound drops nothing."""
    below = [r for r in records if low is not None and r["rm_score"] < low]
    above = [r for r in records if high is not None and r["rm_score"] > high]
    kept = [r for r in records if (low is None or r["rm_score"] >= low) and (high is None or r["rm_score"] <= high)]
    return kept, len(below), len(above)


def collect(cfg: FigaCollectConfig, run: RunDir, progress: bool = True) -> dict:
    """Run every stage into ``run`` (resuming what exists), mark it finished and return the summary."""
    from fgrlhf.data.loading import DataError, write_jsonl
    from fgrlhf.editing.pipeline import run_edit

    start_time = time.perf_counter()
    out = run.path
    prompts = load_prompt_list(cfg.prompts)
    run.start()  # after the prompts load: bad input loses nothing
    rollouts, generated = rollouts_stage(cfg, prompts, out)
    mark_truncated(rollouts, cfg)
    # A response that is EOS at once has nothing to revise (and `fgrlhf edit` rejects empty fields).
    candidates = [r for r in rollouts if r["response"].strip()]
    summary: dict = {
        "out": str(out / "edits.jsonl"),
        "prompts": len(prompts),
        "rollouts": {
            "total": len(rollouts),
            "generated": generated,
            "resumed": len(rollouts) - generated,
            "empty": len(rollouts) - len(candidates),
            "truncated": sum(r["truncated"] for r in rollouts),
        },
    }
    band = cfg.filter
    if band.rm is not None:
        candidates, scored_now = score_stage(band, candidates, out)
        kept, below, above = select_band(candidates, band.low, band.high)
        scores = [r["rm_score"] for r in candidates]
        summary["filter"] = {
            "rm": band.rm,
            "low": band.low,
            "high": band.high,
            "scored": len(candidates),
            "scored_now": scored_now,
            "score_min": min(scores, default=None),
            "score_max": max(scores, default=None),
            "below_low": below,
            "above_high": above,
            "kept": len(kept),
        }
        candidates = kept
    else:
        summary["filter"] = {"rm": None, "kept": len(candidates)}
    if not candidates:
        raise DataError(f"no response left to edit: {json.dumps(summary)}")
    write_jsonl(out / "selected.jsonl", candidates)
    edit_cfg = cfg.edit
    if "tokenizer" not in edit_cfg.model_fields_set:  # edit statistics in the policy's own tokens
        edit_cfg = edit_cfg.model_copy(update={"tokenizer": cfg.model.name})
    edit = run_edit(edit_cfg, out / "selected.jsonl", out / "edits.jsonl", progress=progress)
    summary["edit"] = edit.as_dict()
    summary["edited"] = edit.statuses.get("edited", 0)
    summary["elapsed_s"] = round(time.perf_counter() - start_time, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    run.finish(summary)
    return summary
