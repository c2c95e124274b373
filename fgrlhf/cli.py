"""The ``fgrlhf`` console command.

Each subcommand lives in the module that implements it, which exposes ``add_arguments(parser)`` and
``main(args) -> int`` and imports heavy libraries (torch, ray, deepspeed) inside ``main`` so that
``fgrlhf --help`` answers instantly.
"""

from __future__ import annotations

import _thread
import argparse
import importlib
import logging
import os
import sys
import threading
from contextlib import contextmanager

from fgrlhf.data.loading import DEFAULT_MAX_FIELD_BYTES, MAX_FIELD_BYTES_ENV

# A command module may set RESUME_HINT: what Ctrl-C kept and how to continue.
DEFAULT_RESUME_HINT = "nothing is lost that completed; re-run the same command"

# name -> (module, one-line help)
COMMANDS = {
    "edit": ("fgrlhf.editing.edit_cli", "minimally edit the less-preferred responses with an LLM or rules"),
    "inspect-edits": ("fgrlhf.editing.inspect_edits_cli", "statistics and highlighted examples of an edit file"),
    "train-rm": ("fgrlhf.reward.train_rm_cli", "train a token-level (Eq. 3/4) or sequence-level reward model on Ray"),
    "eval-rm": (
        "fgrlhf.reward.eval_rm_cli",
        "pairwise accuracy (bootstrap 95%% CI) and token-reward heat map of an RM",
    ),
    "ppo": ("fgrlhf.trainers.ppo.ppo_cli", "token-reward PPO on Ray (policy/critic learners, rollout, RM, reference)"),
    "env-data": ("fgrlhf.envs.env_data_cli", "simulated-preference data: prompts, gold-labelled pairs"),
    "winrate": (
        "fgrlhf.evaluation.winrate_cli",
        "win rate of a model vs the eval set's reference outputs (gold or LLM judge)",
    ),
    "figa-data": ("fgrlhf.figa.figa_data_cli", "FIGA data: policy rollouts -> RM score band -> editor -> edit records"),
    "demo": (
        "fgrlhf.pipelines.demo_cli",
        "the main job: edits -> token RM -> token-level PPO -> win rate, on the embedded default",
    ),
    "paper": (
        "fgrlhf.pipelines.paper_cli",
        "the paper's experiment as one resumable job: data -> edits -> RMs -> PPO arms -> Tables 1-3",
    ),
    "figa": ("fgrlhf.figa.figa_cli", "FIGA fine-grained SFT on initial/revised response pairs (or plain SFT) on Ray"),
    "plan": (
        "fgrlhf.runtime.plan_cli",
        "placement and per-GPU memory of a ppo/rm/figa job, and whether it fits, before it runs",
    ),
}


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that lets options and positionals interleave, so ``--resume a.b=1`` and
    ``a.b=1 --resume c.d=2`` both work. argparse's subparser action calls ``parse_known_args``, which is
    routed to ``parse_known_intermixed_args``; that one calls ``parse_known_args`` itself (Python 3.11), so
    the nested call takes the plain path."""

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fgrlhf",
        description="Fine-grained RLHF: minimal-edit data, token-level reward models, token-reward PPO, FIGA.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name, help=help_text, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(command)
        command.add_argument(
            "--max-field-bytes",
            type=int,
            metavar="N",
            help=f"refuse input records with a text field over N bytes (default {DEFAULT_MAX_FIELD_BYTES}, "
            f"0 = no limit; also {MAX_FIELD_BYTES_ENV})",
        )
        command.set_defaults(_module=module)
    return parser


@contextmanager
def redeliver_swallowed_interrupts():
    """A Ctrl-C that lands while a ``__del__`` runs (garbage collection, e.g. of ``regex`` objects) is
    printed as "Exception ignored in ..." and dropped, and the command would run to its end. Inside this
    context such an interrupt is delivered again, to whatever the main thread runs next (from a timer
    thread: raised from the hook itself it would be dropped the same way; landing in another destructor it
    comes round again)."""

    def hook(unraisable) -> None:
        if unraisable.exc_type is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
            redeliver = threading.Timer(0.1, _thread.interrupt_main)
            redeliver.daemon = True
            redeliver.start()
        else:
            previous(unraisable)

    previous, sys.unraisablehook = sys.unraisablehook, hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


def main(argv: list[str] | None = None) -> int:
    from fgrlhf.config import ConfigError
    from fgrlhf.data.loading import DataError

    module = None
    try:
        args = build_parser().parse_args(argv)  # imports every command module: seconds, also interruptible
        module = args._module
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        if args.max_field_bytes is not None:
            if args.max_field_bytes < 0:
                raise ConfigError("--max-field-bytes must be >= 0 (0 = no limit)")
            os.environ[MAX_FIELD_BYTES_ENV] = str(args.max_field_bytes)  # inherited by Ray workers
        with redeliver_swallowed_interrupts():
            return module.main(args)
    except (ConfigError, DataError) as exc:
        # Bad input is the user's to fix: say what and where, without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Ctrl-C: what completed is already on disk (caches, checkpoints, finished stages), so one line on
        # how to go on replaces the traceback. 130 = 128 + SIGINT, the shell's convention.
        print(f"interrupted: {getattr(module, 'RESUME_HINT', DEFAULT_RESUME_HINT)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
