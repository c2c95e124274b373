"""Will a job fit? ``fgrlhf plan --config CONFIG [key=value ...] [--json] [--model-config PATH|PRESET]``.

Prints, without loading any model, where every actor goes (placement-group bundle, GPU, node), each role's
memory per GPU (weights, gradients, optimizer states under its ZeRO stage and world size, activations at
micro-batch x (prompt + response) tokens with or without gradient checkpointing, vLLM's KV cache), the host
RAM peak per node and the checkpoint size on disk, then whether the job fits and, if not, what does not.
Plans ppo, train-rm and figa/sft configs; a CPU-only job (no GPUs asked for) is checked against host RAM.
Model sizes come from each checkpoint's config.json; ``--model-config`` (a config.json path or a preset:
llama-7b, llama-13b, smollm2-135m) stands in for checkpoints that are not on this machine. ``fgrlhf ppo`` and
``fgrlhf train-rm`` run the same check before starting Ray and refuse a job that cannot fit (``--force``).
Exit status: 0 fits, 1 does not fit, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def add_capacity_arguments(parser: argparse.ArgumentParser) -> None:
    """The cluster's capacity flags, shared by ``plan``, ``ppo`` and ``train-rm``."""
    parser.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help="memory of one GPU (default: the visible CUDA device's, else 80 for A100-80G)",
    )
    parser.add_argument(
        "--host-ram-gb",
        type=float,
        default=None,
        help="RAM of one node (default: this machine's; unchecked for a GPU job planned on a machine without CUDA)",
    )
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="GPUs per node (default: every GPU the job asks for on one node)",
    )
    parser.add_argument(
        "--model-config",
        default=None,
        metavar="PATH|PRESET",
        help="architecture for models whose checkpoint is not here (llama-7b, llama-13b, "
        "smollm2-135m, or a config.json)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="a ppo, rm, figa or sft YAML config (configs/)")
    parser.add_argument(
        "--kind", choices=("ppo", "rm", "figa"), default=None, help="the config's command (default: told from its keys)"
    )
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    add_capacity_arguments(parser)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, as for the command")


def compute(
    args: argparse.Namespace, kind: str | None = None, config: str | None = None, overrides: list[str] | None = None
) -> dict:
    from fgrlhf.runtime.planning import default_gpu_memory_gb, default_host_ram_gb, evaluate, plan_job

    _, _, job = plan_job(
        config if config is not None else args.config,
        list(args.overrides) if overrides is None else overrides,
        kind or getattr(args, "kind", None),
        args.model_config,
    )
    host_ram = args.host_ram_gb if args.host_ram_gb is not None else default_host_ram_gb(job)
    return evaluate(job, args.gpu_memory_gb or default_gpu_memory_gb(), host_ram, args.gpus_per_node)


def render(plan: dict) -> str:
    """The plan as text: placement per node and GPU, memory per role, host RAM, disk, verdict."""
    lines = [
        f"{plan['kind']} job: {plan['gpus']} GPU(s) of {plan['gpu_memory_gb']:g} GiB, "
        f"placement strategy {plan['placement']['strategy']}"
    ]
    for node in plan["placement"]["nodes"]:
        lines.append(f"node {node['node']} (host RAM peak {node['host_ram_gb']:.1f} GiB)")
        for gpu in node["gpus"]:
            lines.append(f"  GPU {gpu['gpu']}: {', '.join(gpu['roles'])}  {gpu['memory_gb']:.1f} GiB")
        if node["cpu_roles"]:
            lines.append(f"  CPU: {', '.join(node['cpu_roles'])}")
    lines.append("")
    lines.append(f"{'role':<10} {'actors':>6} {'GPUs':>5} {'ZeRO':>4} {'GiB/GPU':>8}  components (GiB)")
    for role in plan["roles"]:
        per_gpu = f"{role['memory_gb_per_gpu']:.2f}" if role["memory_gb_per_gpu"] is not None else "cpu"
        comps = ", ".join(f"{k} {v:.2f}" for k, v in role["components_gb"].items())
        stage = "-" if role["zero_stage"] is None else str(role["zero_stage"])
        lines.append(f"{role['role']:<10} {role['count']:>6} {role['gpus']:>5g} {stage:>4} {per_gpu:>8}  {comps}")
        lines += [f"{'':<10} note: {note}" for note in role["notes"]]
    lines.append("")
    limit = plan["host_ram_limit_gb"]
    lines.append(
        f"host RAM peak: {plan['host_ram_gb']:.1f} GiB per node "
        + (f"(limit {limit:.1f})" if limit is not None else "(not checked: give --host-ram-gb)")
    )
    lines.append(
        f"checkpoint: {plan['checkpoint_gb']:.2f} GiB each; on disk with the kept checkpoints and the "
        f"final export: {plan['disk_gb']:.2f} GiB"
    )
    lines.append("fits: yes" if plan["fits"] else "fits: NO\n" + "\n".join(f"  - {p}" for p in plan["problems"]))
    return "\n".join(lines)


def check_before_run(args: argparse.Namespace, kind: str, config: str | None, overrides: list[str]) -> None:
    """``fgrlhf ppo`` / ``train-rm``: refuse a job that cannot fit, with the plan in the message (``--force``
    skips). A job whose models the plan cannot size here (a checkpoint only the cluster has) is run."""
    from fgrlhf.config import ConfigError
    from fgrlhf.runtime.planning import PlanError

    if args.force:
        return
    try:
        plan = compute(args, kind, config, overrides)
    except PlanError as exc:
        log.warning("memory plan skipped: %s", exc)
        return
    if not plan["fits"]:
        raise ConfigError("the job does not fit (pass --force to run it anyway):\n" + render(plan))
    log.info("memory plan: fits (%s GPU(s), host RAM peak %.1f GiB)", plan["gpus"], plan["host_ram_gb"])


def main(args: argparse.Namespace) -> int:
    plan = compute(args)
    print(json.dumps(plan, indent=2) if args.json else render(plan))
    return 0 if plan["fits"] else 1
