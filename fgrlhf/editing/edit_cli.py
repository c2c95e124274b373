"""Minimally edit the less-preferred response of each pair (or each single response).

  fgrlhf edit --input pairs.jsonl --output edits.jsonl --editor anthropic [--model claude-sonnet-5-5]
  fgrlhf edit --input pairs.jsonl --output edits.jsonl --editor anthropic --batch batch.poll_interval_s=30
  fgrlhf edit --input pairs.jsonl --output edits.jsonl --editor rule --rules configs/edit-rules-default.yaml rule.recall=0.8
  fgrlhf edit --input pairs.jsonl --output edits.jsonl --editor hf --model smollm2

Inputs: preference pairs (the rejected side is edited) in TRL's prompt/chosen/rejected, AlpacaFarm's
instruction/input/output_1/output_2/preference or a conversational schema, or single responses
{prompt, response}; any other schema renamed by --field-map; JSONL, JSON, parquet, a save_to_disk directory
or hf:REPO[:CONFIG[:SPLIT]] (docs/data.md). Settings: configs/edit-default.yaml, overridden by key=value (e.g. retry.max_attempts=8,
max_changed_fraction=0.4) and then by the flags. Claude reads ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL.
Completed items are cached (SQLite) as they finish: re-running the same command after a crash or Ctrl-C
re-sends nothing that completed, and retries only failed items.

Exit status: 0 when every item completed (edited, unchanged, or rejected by the filters); 3 when any item
failed (the summary counts them by cause) or the run stopped early: an authentication error, or the first
--max-initial-connect-failures requests all failing to connect; 2 for bad input or settings; 130 on Ctrl-C.
Completed items stay cached in every case.

--batch (Claude only) sends the items through the Message Batches API at half the price: in batches of
batch.chunk_size requests, polled every batch.poll_interval_s, results joined by custom_id; errored,
expired and malformed items are resubmitted in new batches within the retry limits. Batch ids are stored
in the cache, so a re-run after a crash or Ctrl-C re-attaches to the batches still processing instead of
paying for them again. Records and statuses are the same as without --batch.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fgrlhf.data.schemas import add_field_map_argument

# What Ctrl-C keeps and how to go on (printed by fgrlhf.cli).
RESUME_HINT = "completed items are cached; re-run the same command to resume"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="pairs or single responses (docs/data.md)")
    add_field_map_argument(parser)
    parser.add_argument("--output", required=True, help="edit records (JSONL), written atomically at the end")
    parser.add_argument("--editor", choices=["anthropic", "hf", "rule"], help="default: the config's editor")
    parser.add_argument("--model", help="model of the LLM editor (Claude model id; tiny/smollm2/path for hf)")
    parser.add_argument("--rules", help="rule editor: YAML list of {name, pattern, replacement}")
    parser.add_argument("--concurrency", type=int, help="items in flight at once")
    parser.add_argument(
        "--max-initial-connect-failures",
        type=int,
        metavar="N",
        help="stop (exit 3) when the first N requests all fail to connect; 0 = never "
        "(config key retry.max_initial_connect_failures, default 16)",
    )
    parser.add_argument(
        "--batch",
        action="store_true",
        help="anthropic editor: use the Message Batches API (half price; see batch.* keys)",
    )
    parser.add_argument("--cache", help="SQLite cache path (default OUTPUT.cache.sqlite)")
    parser.add_argument("--config", help="YAML config (see configs/edit-default.yaml)")
    parser.add_argument("--skip-invalid", action="store_true", help="skip malformed input records (counted)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import ConfigError, load_config
    from fgrlhf.editing.config import EditConfig
    from fgrlhf.editing.pipeline import EXIT_INCOMPLETE, exit_status, run_edit
    from fgrlhf.editing.retry import FatalError
    from fgrlhf.runtime.preflight import check_data, check_file

    check_data(args.input, "--input")
    if args.rules is not None:
        check_file(args.rules, "--rules")

    # One INFO line per HTTP request would drown the progress bar.
    for name in ("httpx", "httpx2"):  # newer anthropic SDKs send through httpx2
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = load_config(EditConfig, args.config, args.overrides)
    try:
        for flag, key in (("editor", "editor"), ("concurrency", "concurrency"), ("cache", "cache")):
            if getattr(args, flag) is not None:
                setattr(cfg, key, getattr(args, flag))
        if args.rules is not None:
            cfg.rule.rules = args.rules
        if args.model is not None:
            cfg.set_model(args.model)
        if args.max_initial_connect_failures is not None:
            cfg.retry.max_initial_connect_failures = args.max_initial_connect_failures
        if args.batch:
            if cfg.editor != "anthropic":
                raise ValueError(f"--batch needs --editor anthropic, not {cfg.editor}: only Claude has a batch API")
            cfg.batch.enabled = True
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        raise ConfigError(f"invalid command-line flag: {exc}") from None
    try:
        summary = run_edit(
            cfg,
            args.input,
            args.output,
            skip_invalid=args.skip_invalid,
            progress=not args.no_progress,
            field_map=args.field_map,
        )
    except FatalError as exc:
        print(f"error: {exc}; completed items are cached, re-run to resume", file=sys.stderr)
        return EXIT_INCOMPLETE
    print(summary.render())
    return exit_status(summary.statuses)
