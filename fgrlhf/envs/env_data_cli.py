"""Build a simulated-preference data set: prompts for PPO, eval prompts with references, labelled pairs.

  fgrlhf env-data --env synthetic --out runs/env-syn [--n-prompts N] [--seed S] [key=value ...]
  fgrlhf env-data --env alpaca-sim --out runs/env-alpaca --n-prompts 8 generation.max_new_tokens=64

Writes DIR/prompts_train.jsonl (``prompt``), DIR/prompts_eval.jsonl (``prompt``, ``reference``: the
win-rate eval set), DIR/pairs.jsonl (``prompt``, ``chosen``, ``rejected`` plus ``gold_chosen``,
``gold_rejected``, ``gold_agrees``), DIR/env_data.json (summary) and DIR/config.yaml. Two responses per
pair prompt come from the env's grammar generator (synthetic), from the policy model with HF generate
(alpaca-sim), or from ``responses_file`` (JSONL of ``prompt``/``response``, the first two per prompt).
Labels are Bradley–Terry samples on the gold difference with label noise (fgrlhf.envs.preferences).
``sft_steps > 0`` (synthetic) also trains the tiny policy on the grammar into DIR/policy.
The rule editor (``fgrlhf edit`` with configs/edit-rules-<env>.yaml) then plays the minimal editor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fgrlhf.envs.env_data import ENV_CHOICES, GRAMMAR_ENVS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", required=True, choices=ENV_CHOICES)
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--config", type=Path, help="YAML with EnvDataConfig keys")
    parser.add_argument("--n-prompts", type=int, help="number of pair prompts (overrides n_prompts)")
    parser.add_argument("--seed", type=int, help="overrides seed")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import load_config
    from fgrlhf.envs.env_data import EnvDataConfig, build

    overrides = list(args.overrides)
    if args.n_prompts is not None:
        overrides.append(f"n_prompts={args.n_prompts}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    cfg = load_config(EnvDataConfig, args.config, overrides)
    if cfg.sft_steps and args.env not in GRAMMAR_ENVS:
        from fgrlhf.config import ConfigError

        raise ConfigError(f"sft_steps: only the grammar envs {GRAMMAR_ENVS} train their own policy")
    print(json.dumps(build(args.env, cfg, args.out)))
    return 0
