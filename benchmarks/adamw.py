"""One AdamW step over a model's parameters on this CPU: torch's three implementations side by side.

  python benchmarks/adamw.py [--model smollm2] [--threads 1] [--steps 3] [--rounds 2] [--json OUT]

A learner steps its optimizer once per minibatch (four times a PPO step in the shipped configs, for the policy
and the critic each), so the step's cost is paid 8 times a PPO step. torch's AdamW has three implementations:
``for-loop`` (one elementwise op at a time, parameter by parameter: torch's choice on a CPU unless told), ``foreach``
(the same ops over lists of tensors) and ``fused`` (one kernel reading each parameter, gradient and moment once).
fgrlhf's learners use the fused one where torch has it (:func:`fgrlhf.runtime.distributed.adamw`), as
transformers' Trainer (so TRL) does by default.

For each implementation, ``--rounds`` times in turn (interleaved, so a change of load hits all three alike): a
fresh optimizer over ``--model``'s parameters with seeded gradients, one untimed step (it allocates the
moments), then ``--steps`` timed steps. Reported: the median wall and CPU seconds of a step, each one's ratio to
``fused``, and the largest |Δ| of any parameter after the steps against ``for-loop`` (float rounding only: the
same update). One table goes to stdout, the whole record to ``--json OUT``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

import torch

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _parameters(model: torch.nn.Module, seed: int) -> list[torch.nn.Parameter]:
    """A copy of the model's parameters, each with a seeded gradient of a learner's typical size."""
    generator = torch.Generator().manual_seed(seed)
    params = []
    for p in model.parameters():
        copy = torch.nn.Parameter(p.detach().clone())
        copy.grad = torch.randn(p.shape, generator=generator) * 1e-3
        params.append(copy)
    return params


def _time_steps(model: torch.nn.Module, options: dict, steps: int, seed: int) -> tuple[float, float, list]:
    params = _parameters(model, seed)
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.01, **options)
    optimizer.step()
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        optimizer.step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus), params


def run(args: argparse.Namespace) -> dict:
    from fgrlhf.config import ModelConfig
    from fgrlhf.models import load_causal_lm, load_tokenizer

    torch.set_num_threads(args.threads)
    model = load_causal_lm(ModelConfig(name=args.model), load_tokenizer(args.model))
    walls: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    cpus: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    final: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, options in IMPLEMENTATIONS.items():
            wall, cpu, final[name] = _time_steps(model, options, args.steps, args.seed)
            walls[name].append(wall)
            cpus[name].append(cpu)
    fused_cpu = statistics.median(cpus["fused"])
    rows = {}
    for name in IMPLEMENTATIONS:
        diff = max(float((a - b).detach().abs().max()) for a, b in zip(final[name], final["for-loop"], strict=True))
        cpu = statistics.median(cpus[name])
        rows[name] = {
            "wall_s_per_step": statistics.median(walls[name]),
            "cpu_s_per_step": cpu,
            "cpu_ratio_to_fused": cpu / fused_cpu,
            "max_abs_diff_vs_for_loop": diff,
        }
    return {
        "benchmark": "adamw_step",
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "threads": args.threads,
        "steps": args.steps,
        "rounds": args.rounds,
        "implementations": rows,
    }


def render(result: dict) -> str:
    lines = [
        f"AdamW step over {result['model']} ({result['parameters'] / 1e6:.1f}M parameters), "
        f"{result['threads']} thread(s), median of {result['rounds']} x {result['steps']} steps",
        "",
        "| implementation | wall s / step | CPU s / step | CPU vs fused | max abs diff vs for-loop |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, row in result["implementations"].items():
        lines.append(
            f"| {name} | {row['wall_s_per_step']:.3f} | {row['cpu_s_per_step']:.3f} | "
            f"{row['cpu_ratio_to_fused']:.2f} | {row['max_abs_diff_vs_for_loop']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2, tiny or an HF checkpoint directory")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a learner actor runs 1)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per implementation and round")
    parser.add_argument("--rounds", type=int, default=2, help="times each implementation is timed, in turn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", metavar="OUT", type=Path)
    args = parser.parse_args(argv)
    if min(args.threads, args.steps, args.rounds) < 1:
        parser.error("--threads, --steps and --rounds must be at least 1")
    result = run(args)
    print(render(result))
    if args.json:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
