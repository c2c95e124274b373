"""The paper's experiment (2406.02756) as one resumable job: preference data to Tables 1–3.

  fgrlhf paper --config configs/paper-llama7b-8xa100.yaml --out /mnt/shared/paper --dry-run
  ray job submit --working-dir . -- python ray_jobs/paper.py --config configs/paper-llama7b-8xa100.yaml \\
      --out /mnt/shared/paper

Stages (each skipped when done with the same inputs and settings, so a resubmitted job continues; PPO arms
resume from their checkpoints; the Claude judge's and editor's caches live under --out, so no request is
paid twice): data splits → edits → sequence and token RMs (timed) → Table 2 → SFT validation win rate (fixes
the time-to-target) → PPO arms × seeds, evaluated every ``ppo.eval_every`` steps on the validation split →
Table 1 on each run's best checkpoint, on the eval split → DIR/report.md, DIR/report.json, DIR/plots/.

``--dry-run`` prints ``fgrlhf plan`` for every RM and PPO config, the Claude requests, tokens and price, and
the GPU-hours estimate, then a verdict ("fits" or what does not; exit 1); it starts nothing and writes
nothing. --out must be storage every node can write: checked at the start by a probe file per node. A
relative --out is refused inside a Ray job (it would land in Ray's temporary copy of the working dir).
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

log = logging.getLogger(__name__)

# What Ctrl-C keeps and how to go on (printed by fgrlhf.cli).
RESUME_HINT = "finished stages and PPO checkpoints are kept; re-run the same command (same --out) to continue"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, help="YAML with PaperConfig keys (configs/paper-*)")
    parser.add_argument("--out", required=True, help="output directory on storage every node can write")
    parser.add_argument("--dry-run", action="store_true", help="plan, Claude cost and GPU-hours; start nothing")
    parser.add_argument("--num-cpus", type=int, help="CPUs of a local Ray instance (default: all)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")


def _probe(out: str, node: str) -> str:
    """Write and read back a file under ``out`` on this node."""
    path = Path(out) / ".probe" / node
    path.parent.mkdir(parents=True, exist_ok=True)
    token = f"{node} {socket.gethostname()}"
    path.write_text(token, encoding="utf-8")
    if path.read_text(encoding="utf-8") != token:
        raise OSError(f"{path}: read back other content than was written")
    return token


def probe_nodes(out: Path) -> int:
    """Every live node writes and reads back a probe file under ``out``, and this driver sees each one:
    storage that some node cannot write, or that is local to a node, fails here instead of mid-job."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from fgrlhf.config import ConfigError

    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    task = ray.remote(num_cpus=0)(_probe)
    pending = {
        node: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(str(out), node)
        for node in nodes
    }
    for node, ref in pending.items():
        try:
            token = ray.get(ref)
        except Exception as exc:
            raise ConfigError(f"--out {out}: node {node} cannot write and read it back ({exc})") from None
        seen = out / ".probe" / node
        if not seen.is_file() or seen.read_text(encoding="utf-8") != token:
            raise ConfigError(
                f"--out {out}: node {token} wrote its probe file but this driver does not see it: "
                "--out must be storage shared by every node"
            )
    return len(nodes)


def main(args: argparse.Namespace) -> int:
    from fgrlhf.config import dump_config, load_config
    from fgrlhf.pipelines.paper import PaperJob
    from fgrlhf.pipelines.paper_config import PaperConfig
    from fgrlhf.runtime.distributed import ray_instance
    from fgrlhf.runtime.run_dir import RunLock, check_out_dir

    cfg = load_config(PaperConfig, args.config, args.overrides)
    if args.dry_run:
        from fgrlhf.pipelines.paper_plan import dry_run
        from fgrlhf.runtime.plan_cli import render

        fits, text = dry_run(cfg, render)
        print(text)
        return 0 if fits else 1
    out = check_out_dir(args.out)
    wandb = None
    if cfg.wandb.enabled:  # before anything starts: a missing extra is one error line
        from fgrlhf.pipelines.paper_wandb import WandbLog

        wandb = WandbLog(cfg, out)
    lock = RunLock.acquire(out, take_over_stale=True)  # one job per --out; a killed driver's lock is taken over
    dump_config(cfg, out / "config.yaml")

    def say(text: str) -> None:
        print(text, flush=True)

    try:
        with ray_instance(args.num_cpus, dashboard=True) as dashboard:
            if dashboard:
                say(f"Ray dashboard: http://{dashboard}")
            say(f"--out {out}: written and read back by {probe_nodes(out)} node(s)")
            PaperJob(cfg, out, say, wandb).run()
    finally:
        lock.release()
    print((out / "report.md").read_text(encoding="utf-8"))
    return 0
