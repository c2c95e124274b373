"""The ``fgrlhf`` console command.

Each subcommand lives in the module that implements it, which exposes ``add_arguments(parser)`` and
``main(args) -> int`` and imports heavy libraries (torch, ray, deepspeed) inside ``main`` so that
``fgrlhf --help`` answers instantly.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS = {
    "edit": ("fgrlhf.editing.cli_edit", "minimally edit the less-preferred responses with an LLM or rules"),
    "inspect-edits": ("fgrlhf.editing.inspect", "statistics and highlighted examples of an edit file"),
    "train-rm": ("fgrlhf.reward.train", "train a token-level (Eq. 3/4) or sequence-level reward model on Ray"),
    "eval-rm": ("fgrlhf.reward.evaluate", "pairwise accuracy (bootstrap 95%% CI) and token-reward heat map of an RM"),
    "ppo": ("fgrlhf.ppo_cli", "token-reward PPO on Ray (policy/critic learners, rollout, RM, reference)"),
    "env-data": ("fgrlhf.envs.cli_env_data", "simulated-preference data: prompts, gold-labelled pairs"),
    "winrate": ("fgrlhf.winrate", "win rate of a model vs the eval set's reference outputs (gold or LLM judge)"),
    "figa-data": ("fgrlhf.figa.collect", "FIGA data: policy rollouts -> RM score band -> editor -> edit records"),
    "demo": ("fgrlhf.demo", "the main job: edits -> token RM -> token-level PPO -> win rate, on the embedded default"),
    "figa": ("fgrlhf.figa.train", "FIGA fine-grained SFT on initial/revised response pairs (or plain SFT) on Ray"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fgrlhf",
        description="Fine-grained RLHF: minimal-edit data, token-level reward models, token-reward PPO, FIGA.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=module.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(command)
        command.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from fgrlhf.config import ConfigError
    from fgrlhf.data import DataError

    try:
        return args._module.main(args)
    except (ConfigError, DataError) as exc:
        # Bad input is the user's to fix: say what and where, without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
