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
--overwrite, and --resume refuses settings that would change what the kept outputs are (fgrlhf.runtime.run_dir), so
a run never mixes outputs made with different settings.
Prints one JSON line (counts per stage), also written to DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from fgrlhf.runtime.run_dir import add_run_arguments

# What Ctrl-C keeps and how to go on (printed by fgrlhf.cli).
RESUME_HINT = "finished stages and completed edits are kept; re-run the same command with --resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML config (see configs/figa-data-*.yaml)")
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    add_run_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no edit progress bar")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides, e.g. prompts.limit=256 filter.low=-1 edit.rule.recall=0.8",
    )


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.editing.retry import FatalError
    from fgrlhf.figa.collect import collect
    from fgrlhf.figa.config import FIGA_DATA_RUN, FigaCollectConfig
    from fgrlhf.runtime.preflight import check_data, check_model, check_reward_model
    from fgrlhf.runtime.run_dir import open_run

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
