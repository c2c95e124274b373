"""How fast this machine was between the runs of one comparison, so that its drift shows beside the ratios.

  python benchmarks/machine_speed.py [--repeat 10] [--json OUT]   # the probes alone, in turn, as a series

The benchmarks time frameworks one after the other. On a shared VM the speed of a core can change within
minutes: the same code's phases have measured 20–30 % apart in two sweeps of one evening. A ratio of two runs
then mixes the frameworks' costs with the machine's drift. :class:`MachineWatch` marks the boundaries between
the runs: at each mark it times a fixed probe (one thread, float32 matrix multiplies of SmolLM2's widths: a
PPO step on this CPU is ~80 % ``aten::mm``) and reads the machine's CPU steal (time the hypervisor gave this
VM's CPUs to others). It also runs the probe in two processes at once: fgrlhf trains its policy and critic in
two one-thread processes at once while TRL and the floor train on one thread, so how much two processes slow
each other on this VM's two cores (which need not be two whole cores of the host) falls on fgrlhf's CPU
alone. Its summary gives the probe's CPU seconds at every mark, their spread, the pair's slowdown, and the
steal during each run. The probe does not correct the ratios; it says how far the machine moved under them.

Run as a script it times the lone probe and the pair in turn ``--repeat`` times and prints a row each: a
series that shows whether the machine is steady, and how much two processes slow each other, right now.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

if __name__ == "__main__" and not __package__:  # `python benchmarks/NAME.py`: only benchmarks/ is on the path
    from _as_module import run_as_module

    run_as_module(__file__)

PROBE_SHAPE = (576, 1536)  # SmolLM2-135M's hidden and MLP widths
PROBE_MATMULS = 100  # ~1.1 CPU-s on the idle 2-core box


def probe_seconds(start=None) -> tuple[float, float]:
    """CPU and wall seconds of the probe on one thread (torch's intra-op pool held at one thread, restored
    after). ``start``: a barrier to wait at once the operands are ready, so that probes in several processes
    multiply at the same time."""
    import torch

    pool = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(PROBE_SHAPE, generator=generator)
        b = torch.randn(PROBE_SHAPE[::-1], generator=generator)
        a @ b  # the first call pays the allocation, not the arithmetic
        if start is not None:
            start.wait()
        cpu, wall = time.thread_time(), time.perf_counter()
        for _ in range(PROBE_MATMULS):
            a @ b
        return time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        torch.set_num_threads(pool)


def _probe_process(start, results) -> None:
    results.put(probe_seconds(start))


def pair_probe_seconds() -> tuple[float, float]:
    """The probe in two processes at once, as fgrlhf's two learners train: CPU seconds of each (mean) and the
    wall seconds until both finished. Threads of one process would not do: their multiplies run one at a time."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_probe_process, args=(start, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        try:
            start.wait(timeout=120)  # both have imported torch and built their operands
        except threading.BrokenBarrierError:
            codes = [worker.exitcode for worker in workers]
            raise RuntimeError(f"the pair probe's processes did not start (exit codes {codes})") from None
        wall = time.perf_counter()
        cpu = [results.get(timeout=120)[0] for _ in workers]
        return sum(cpu) / len(cpu), time.perf_counter() - wall
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()


def steal_seconds() -> float:
    """The machine's CPU steal since boot, summed over its CPUs (0 where the OS does not report it)."""
    import psutil

    return getattr(psutil.cpu_times(), "steal", 0.0)


class MachineWatch:
    """Marks between runs: ``mark("trl")`` before TRL's run, ..., ``mark("end")`` after the last."""

    def __init__(self, probe=None, pair_probe=None, steal=None):
        self._probe = probe or probe_seconds
        self._pair_probe = pair_probe or pair_probe_seconds
        self._steal = steal or steal_seconds
        self.marks: list[dict] = []

    def mark(self, before: str) -> None:
        cpu, wall = self._probe()
        pair_cpu, pair_wall = self._pair_probe()
        self.marks.append(
            {
                "before": before,
                "time": datetime.now(UTC).strftime("%H:%M:%S"),
                "probe_cpu_seconds": cpu,
                "probe_wall_seconds": wall,
                "pair_probe_cpu_seconds": pair_cpu,
                "pair_probe_wall_seconds": pair_wall,
                "steal_seconds": self._steal(),
            }
        )

    def summary(self) -> dict:
        return summarize(self.marks)


def summarize(marks: list[dict]) -> dict:
    """The probe at each mark, its spread (slowest over fastest, minus 1), how much two probes at once slowed
    each other at each mark (``pair_slowdown``: the pair's CPU per stream over the lone probe's), and the steal
    during each run (from its mark to the next)."""
    if len(marks) < 2:
        raise ValueError(f"a run lies between two marks; got {len(marks)} mark(s)")
    cpu = [mark["probe_cpu_seconds"] for mark in marks]
    return {
        "marks": marks,
        "probe_cpu_spread": max(cpu) / min(cpu) - 1,
        "pair_slowdown": [mark["pair_probe_cpu_seconds"] / mark["probe_cpu_seconds"] for mark in marks],
        "steal_seconds_during": {
            mark["before"]: after["steal_seconds"] - mark["steal_seconds"] for mark, after in itertools.pairwise(marks)
        },
    }


def render(summary: dict) -> str:
    """One line: the probe at every mark, its spread, the pair's slowdown, and the steal during each run."""
    probes = " / ".join(f"{mark['probe_cpu_seconds']:.3f}" for mark in summary["marks"])
    labels = " / ".join(mark["before"] for mark in summary["marks"])
    pairs = " / ".join(f"{slowdown:.2f}" for slowdown in summary["pair_slowdown"])
    steal = ", ".join(f"{name} {seconds:.1f}" for name, seconds in summary["steal_seconds_during"].items())
    return (
        f"Machine speed probe (CPU s, one thread) before {labels}: {probes}; spread "
        f"{summary['probe_cpu_spread']:.1%}; two probes at once, CPU each over alone: {pairs}; "
        f"CPU steal during each run (s): {steal}"
    )


def main(argv: list[str] | None = None) -> int:
    from benchmarks.common import write_json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="lone probe and pair, in turn, this many times")
    parser.add_argument("--json", metavar="OUT", type=Path)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    print("| time (UTC) | alone CPU s | alone wall s | pair CPU s each | pair wall s | pair CPU each over alone |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |", flush=True)
    watch = MachineWatch()
    for round_ in range(args.repeat):
        watch.mark(f"round {round_ + 1}")
        mark = watch.marks[-1]
        print(
            f"| {mark['time']} | {mark['probe_cpu_seconds']:.3f} | {mark['probe_wall_seconds']:.3f} | "
            f"{mark['pair_probe_cpu_seconds']:.3f} | {mark['pair_probe_wall_seconds']:.3f} | "
            f"{mark['pair_probe_cpu_seconds'] / mark['probe_cpu_seconds']:.2f} |",
            flush=True,
        )
    if args.json:
        date = datetime.now(UTC).strftime("%Y-%m-%d")
        write_json(args.json, {"benchmark": "machine_speed", "date": date, "probes": watch.marks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
