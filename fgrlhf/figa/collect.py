"""FIGA's data path: ``fgrlhf figa-data --config FILE --out DIR [--resume | --overwrite] [key=value ...]``.

prompts (the alpaca-sim instructions or any prompts file; the gold evaluation's held-out split excluded)
→ rollouts of the policy being aligned (HF generate) → optionally FIGA's selection of responses worth
revising: keep those whose reward-model score lies in [``filter.low``, ``filter.high``] → any editor of
``fgrlhf edit`` (rule / hf / anthropic) → DIR/edits.jsonl, which ``fgrlhf figa`` reads as ``data.edits_path``.

Every stage keeps its output, so a re-run with ``--resume`` (same settings, a larger ``prompts.limit``, another
score band: see ``FIGA_DATA_RUN`` in fgrlhf.figa.config for what may change) resumes:
DIR/rollouts.jsonl (prompt, response; saved every ``save_every`` generate batches; later stages add
``truncated``: cut by ``generation.max_new_tokens``), DIR/scored.jsonl (plus
``rm_score``; with ``filter.rm``), DIR/selected.jsonl (the edit input), DIR/edits.jsonl and its cache
DIR/edits.jsonl.cache.sqlite (completed edits are never redone). A used DIR is refused without --resume or
--overwrite, and --resume refuses settings that would change what the kept outputs are (fgrlhf.run_dir), so
a run never mixes outputs made with different settings.
Prints one JSON line (counts per stage), also written to DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fgrlhf.run_dir import add_run_arguments

if TYPE_CHECKING:
    from fgrlhf.figa.config import FigaCollectConfig, PromptSourceConfig, RMFilterConfig
    from fgrlhf.run_dir import RunDir

log = logging.getLogger(__name__)

# What Ctrl-C keeps and how to go on (printed by fgrlhf.cli).
RESUME_HINT = "finished stages and completed edits are kept; re-run the same command with --resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/figa-data-*.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    add_run_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no edit progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. prompts.limit=256 filter.low=-1 edit.rule.recall=0.8")


def load_prompt_list(cfg: PromptSourceConfig) -> list[str]:
    """The source's prompts outside the held-out split, shuffled (the first N are the same for every limit)."""
    from fgrlhf.data import DataError, load_prompts
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
    from fgrlhf.data import DataError, load_records

    if not path.exists():
        return []
    done = load_records(path, keys, allow_empty=keys)[: len(planned)]
    for index, (old, new) in enumerate(zip(done, planned)):
        if any(old[k] != new[k] for k in keys):
            raise DataError(f"{path}:{index + 1}: does not match this run's input there (fields {keys}); "
                            "use another --out or delete that file")
    return done


def rollouts_stage(cfg: FigaCollectConfig, prompts: list[str], out: Path) -> tuple[list[dict], int]:
    """``{prompt, response}`` per prompt (resumed, then generated and saved chunk by chunk); and how many
    were generated now."""
    from fgrlhf.data import write_jsonl
    from fgrlhf.policy_eval import generate_responses

    path = out / "rollouts.jsonl"
    planned = [{"prompt": p} for p in prompts]
    done = resume(path, planned, ("prompt",))
    resumed = len(done)
    step = cfg.save_every * cfg.generation.batch_size
    for start in range(len(done), len(prompts), step):
        chunk = prompts[start:start + step]
        # Seeds follow the global batch offset, as if generated in one call.
        gen = cfg.generation.model_copy(update={"seed": cfg.generation.seed + start})
        responses = generate_responses(cfg.model, chunk, gen, desc=f"rollouts {start}+{len(chunk)}/{len(prompts)}")
        done += [{"prompt": p, "response": r} for p, r in zip(chunk, responses)]
        write_jsonl(path, done)
    return done, len(done) - resumed


def mark_truncated(rollouts: list[dict], cfg: FigaCollectConfig) -> None:
    """``truncated``: the response used up ``generation.max_new_tokens`` (re-tokenized; one token of slack for
    the stripped whitespace), so it was cut, not ended; FIGA then trains no EOS after it."""
    from fgrlhf.models import load_tokenizer

    lengths = [len(ids) for ids in load_tokenizer(cfg.model.name)(
        [r["response"] for r in rollouts], add_special_tokens=False)["input_ids"]]
    for record, length in zip(rollouts, lengths):
        record["truncated"] = length >= cfg.generation.max_new_tokens - 1


def rm_scores(cfg: RMFilterConfig, records: list[dict]) -> list[float]:
    """The sequence score of ``cfg.rm`` (token RM: mean r_t; sequence RM: head at EOS) of each response."""
    from fgrlhf.models import load_tokenizer
    from fgrlhf.reward.model import load_reward_model
    from fgrlhf.tokenization import encode_prompt, encode_response, format_prompt

    model = load_reward_model(cfg.rm).eval()
    # An RM saved without its tokenizer (e.g. a random test RM) reads its base model's.
    tokenizer = load_tokenizer(cfg.rm if (Path(cfg.rm) / "tokenizer_config.json").exists()
                               else model.info["base_model"])
    prompt_format = model.info.get("prompt_format", "chat")
    prompt_ids = [encode_prompt(tokenizer, format_prompt(tokenizer, r["prompt"], prompt_format),
                                cfg.max_prompt_tokens) for r in records]
    response_ids = [encode_response(tokenizer, r["response"], cfg.max_response_tokens) for r in records]
    scores = model.score(prompt_ids, response_ids, tokenizer.pad_token_id, cfg.micro_batch_size)
    return scores["sequence"].tolist()


def score_stage(cfg: RMFilterConfig, rollouts: list[dict], out: Path) -> tuple[list[dict], int]:
    """``rollouts`` with ``rm_score`` (resumed, then the rest scored); and how many were scored now."""
    from fgrlhf.data import write_jsonl

    path = out / "scored.jsonl"
    done = resume(path, rollouts, ("prompt", "response"))
    todo = rollouts[len(done):]
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
    from fgrlhf.data import DataError, write_jsonl
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
        "rollouts": {"total": len(rollouts), "generated": generated, "resumed": len(rollouts) - generated,
                     "empty": len(rollouts) - len(candidates),
                     "truncated": sum(r["truncated"] for r in rollouts)},
    }
    band = cfg.filter
    if band.rm is not None:
        candidates, scored_now = score_stage(band, candidates, out)
        kept, below, above = select_band(candidates, band.low, band.high)
        scores = [r["rm_score"] for r in candidates]
        summary["filter"] = {"rm": band.rm, "low": band.low, "high": band.high, "scored": len(candidates),
                             "scored_now": scored_now, "score_min": min(scores, default=None),
                             "score_max": max(scores, default=None), "below_low": below, "above_high": above,
                             "kept": len(kept)}
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


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.editing.retry import FatalError
    from fgrlhf.figa.config import FIGA_DATA_RUN, FigaCollectConfig
    from fgrlhf.preflight import check_data, check_model, check_reward_model
    from fgrlhf.run_dir import open_run

    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = load_config(FigaCollectConfig, args.config, args.overrides)
    check_model(cfg.model.name, "model.name")  # before any model loads
    check_data(cfg.prompts.source, "prompts.source")
    if cfg.filter.rm is not None:
        check_reward_model(cfg.filter.rm, "filter.rm")
    run = open_run(args.out, FIGA_DATA_RUN, cfg, resume=args.resume, overwrite=args.overwrite)
    try:
        summary = collect(cfg, run, progress=not args.no_progress)
    except FatalError as exc:
        print(f"error: {exc}; finished stages and completed edits are kept, re-run with --resume", file=sys.stderr)
        return 3
    print(json.dumps(summary))
    return 0
