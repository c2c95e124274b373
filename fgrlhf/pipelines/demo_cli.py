"""The main job: the fine-grained pipeline on the embedded default model, end to end on this machine.

  fgrlhf demo [--out runs/demo] [--config configs/demo-smollm2-cpu.yaml] [--fresh] [--until STAGE] [key=value ...]

Each stage is an ``fgrlhf`` command run in-process against one local Ray instance (dashboard address
printed at the start), so the demo exercises exactly what users run by hand:

  1. pairs     env-data alpaca-sim: SmolLM2 answers train prompts twice, gold-reward Bradley–Terry labels
  2. edits     edit: the less-preferred response of each pair minimally edited (the rule editor offline,
               Claude when ANTHROPIC_API_KEY is set and ``editor=auto``)
  3. rm        train-rm --kind token on the edit records (Eq. 3 by default: see the config)
  4. rm-eval   eval-rm on held-out gold-labelled pairs, with the HTML token heat map
  5. ppo       a few token-level PPO steps, the token RM's [R1..Rn] as rewards
  6. winrate   gold reward and win rate vs text-davinci-003 (offline gold judge) before and after PPO

A finished stage is skipped, and an interrupted training stage resumes from its checkpoint, so re-running
the same command continues where it stopped; each stage is keyed by its settings and input files
(DIR/stage_keys.json), so one made under other settings is refused, not reused. ``--until STAGE`` stops after that stage (to
inspect its output first; the same command without it continues). Writes DIR/report.md, DIR/report.json
and plots under DIR/plots/.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from fgrlhf.pipelines.demo import DEFAULT_CONFIG, STAGES, DemoConfig, check_resumable, run
from fgrlhf.pipelines.stages import StoppedAfter

# What Ctrl-C keeps and how to go on (printed by fgrlhf.cli).
RESUME_HINT = "finished stages are kept; re-run the same command to continue from the next one"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output directory (default runs/demo)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML with DemoConfig keys")
    parser.add_argument("--fresh", action="store_true", help="delete DIR first instead of resuming")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    parser.add_argument("--until", choices=STAGES, help="stop after this stage (default: run them all)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markdown import Markdown

    from fgrlhf.config import load_config
    from fgrlhf.runtime.distributed import ray_instance
    from fgrlhf.runtime.run_dir import LOCK, RunLock, check_out_dir

    cfg = load_config(DemoConfig, args.config, args.overrides)
    console = Console()
    args.out = check_out_dir(args.out)
    # Locked before --fresh deletes anything; the demo always continues, so a stale lock is taken over (logged).
    RunLock.acquire(args.out, take_over_stale=True)
    if args.fresh:
        for entry in args.out.iterdir():
            if entry.name != LOCK:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
    check_resumable(cfg, args.out)
    began = time.perf_counter()
    with ray_instance(args.num_cpus, dashboard=True) as dashboard:
        if dashboard:
            console.print(f"Ray dashboard: [bold]http://{dashboard}[/bold]")
        try:
            run(cfg, args.out, console, args.until)
        except StoppedAfter as stop:
            console.print(f"stopped after stage {stop} (--until); the same command without --until continues")
            return 0
    console.print(Markdown((args.out / "report.md").read_text()))
    console.print(f"this run: {time.perf_counter() - began:.0f} s; report: {args.out / 'report.md'}")
    return 0
