"""Where a Ray job's CPU seconds go: every process of the local Ray instance sampled while the job runs.

A :class:`TreeSampler` thread in the driver reads the user + system CPU seconds of the driver and of every
process below it (Ray's GCS, raylet, agents and worker processes, actors included) every ``interval``
seconds, and takes one more sample as soon as a watched file (the trainer's ``metrics.jsonl``) gains a line:
those samples mark the step boundaries. Afterwards, with Ray's task events (``ray.timeline()``) and its actor
table (actor -> process), each process's CPU inside a step is split into

- per actor: the CPU spent while each of its methods executed (a method's share of a sampling interval is
  its share of the interval's time: the cumulative CPU is interpolated linearly between samples, so a method
  shorter than ``interval`` is attributed approximately), the CPU outside any method (Ray's core-worker
  threads, idle polling, argument deserialisation queued before a method starts) and that of the processes
  it started (compilers, worker pools);
- the driver (this process, less the sampler's own thread) and the other processes below it, by name:
  Ray's own (GCS, raylet, agents, idle workers).

Functions on the recorded series are pure (no Ray, no psutil) and unit-tested.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

SAMPLER = -1  # series key of the sampler thread's own CPU (subtracted from the driver's)

# Actor methods by the phase of fgrlhf's PPO step that calls them (matched on the method name, whatever the
# class): the phases are barriers, so a method's CPU belongs to one phase (under async_rollout the next
# batch's generation overlaps score and train; its CPU still counts as rollout). Methods not listed
# (start-up, checkpoints) fall under "other".
PHASE_OF_METHOD = {
    "generate": "rollout",
    "behaviour_logprobs": "rollout",
    "generation_info": "rollout",
    "score": "score",
    "logprobs": "score",
    "evaluate": "score",
    "train": "train",
    "push_weights": "weight_push",
    "receive_weights": "weight_push",
}


# --- sampling ---------------------------------------------------------------------------------------------
@dataclass
class TreeSampler:
    """Samples the CPU seconds of this process and its descendants, and samples at once when ``watch`` gains
    a line (a step's end, whose time is :meth:`mark_times`). Use as a context manager around the job."""

    watch: Path
    interval: float = 0.1
    poll: float = 0.02  # seconds between looks at ``watch``: the latency of a step's end
    refresh: float = 2.0  # seconds between re-listings of the process tree (a full /proc scan)
    samples: list[tuple[float, dict[int, float]]] = field(default_factory=list)
    # when each step's line was written (the file's mtime): the sampler may notice it late on a busy
    # machine, after the next step's first actor call has started
    written: list[float] = field(default_factory=list)
    labels: dict[int, str] = field(default_factory=dict)  # pid -> process title or program name
    created: dict[int, float] = field(default_factory=dict)  # pid -> start time (epoch s)
    parents: dict[int, int] = field(default_factory=dict)  # pid -> parent pid

    def __post_init__(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._processes: dict = {}

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop = True
        self._thread.join()

    def _relist(self) -> None:
        import psutil

        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            if process.pid not in self._processes:
                try:
                    self.labels[process.pid] = process_label(process.cmdline(), process.name())
                    self.created[process.pid] = process.create_time()
                    self.parents[process.pid] = process.ppid()
                except psutil.Error:  # exited while being listed
                    continue
                self._processes[process.pid] = process

    def _sample(self) -> None:
        import psutil

        now = time.time()
        cpu = {SAMPLER: time.thread_time()}
        for pid, process in list(self._processes.items()):
            try:
                times = process.cpu_times()
            except psutil.Error:  # exited: its series ends at the last sample
                del self._processes[pid]
                continue
            cpu[pid] = times.user + times.system
        self.samples.append((now, cpu))

    def _lines(self) -> int:
        try:
            return self.watch.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def _run(self) -> None:
        size, lines, next_sample, next_list = -1, 0, 0.0, 0.0
        while not self._stop:
            now = time.time()
            count = lines
            try:
                stat = self.watch.stat()
                current, mtime = stat.st_size, stat.st_mtime
            except FileNotFoundError:
                current, mtime = -1, now
            if current != size:
                size, count = current, self._lines()
            if count > lines or now >= next_sample:  # a new line is sampled at once: it ends a step
                self._sample()
                next_sample = now + self.interval
                self.written += [min(mtime, now)] * (count - lines)
                lines = max(lines, count)
            if now >= next_list:
                self._relist()
                next_list = now + self.refresh
            time.sleep(self.poll)  # cheaper than Event.wait: the loop's own CPU counts against the driver
        self._sample()

    def series(self) -> dict[int, list[tuple[float, float]]]:
        """pid (or :data:`SAMPLER`) -> [(epoch s, cumulative CPU s)], in time order."""
        out: dict[int, list[tuple[float, float]]] = defaultdict(list)
        for t, cpu in self.samples:
            for pid, seconds in cpu.items():
                out[pid].append((t, seconds))
        return dict(out)

    def mark_times(self) -> list[float]:
        """When each step ended: its metrics line's write time."""
        return list(self.written)


def process_label(cmdline: list[str], name: str) -> str:
    """A readable name of a Ray process: its title (``ray::raylet``-style) or its Python script's name."""
    if cmdline and cmdline[0].startswith("ray::"):
        return cmdline[0].split()[0]
    scripts = [Path(arg).name for arg in cmdline[1:] if arg.endswith(".py")]
    return scripts[0] if scripts else name


# --- arithmetic on the series -----------------------------------------------------------------------------
def cpu_at(series: list[tuple[float, float]], t: float, created: float | None = None) -> float:
    """Cumulative CPU seconds at ``t``, linearly interpolated between samples. Before the first sample it
    rises from 0 at ``created`` (the process's start; None: flat at the first sample); after the last it
    stays at the last (an exited process's final seconds are unknown)."""
    if not series:
        return 0.0
    points = series if created is None or created >= series[0][0] else [(created, 0.0), *series]
    if t <= points[0][0]:
        return points[0][1]
    for (t0, c0), (t1, c1) in itertools.pairwise(points):
        if t <= t1:
            return c0 + (c1 - c0) * (t - t0) / (t1 - t0)
    return points[-1][1]


def cpu_between(series: list[tuple[float, float]], lo: float, hi: float, created: float | None = None) -> float:
    return cpu_at(series, hi, created) - cpu_at(series, lo, created)


def method_cpu(
    series: list[tuple[float, float]],
    intervals: Iterable[tuple[str, float, float]],
    lo: float,
    hi: float,
    created: float | None = None,
) -> dict[str, tuple[float, float]]:
    """Method -> (wall s, CPU s) of one process inside [lo, hi], from its method executions
    ``(method, start, end)`` (clipped to the window; a process runs one method at a time)."""
    out: dict[str, tuple[float, float]] = {}
    for name, start, end in intervals:
        a, b = max(start, lo), min(end, hi)
        if b <= a:
            continue
        wall, cpu = out.get(name, (0.0, 0.0))
        out[name] = (wall + b - a, cpu + cpu_between(series, a, b, created))
    return out


@dataclass
class Actor:
    actor_id: str
    cls: str
    pid: int
    intervals: list[tuple[str, float, float]]  # (Class.method, start, end) epoch seconds


def step_breakdown(
    series: dict[int, list[tuple[float, float]]],
    created: dict[int, float],
    labels: dict[int, str],
    actors: list[Actor],
    driver_pid: int,
    lo: float,
    hi: float,
    parents: dict[int, int] | None = None,
) -> dict:
    """CPU seconds of every process in one step window [lo, hi]: actors (split by method; a process below an
    actor, e.g. a compiler it runs, counts as the actor's ``children_cpu_s``), the driver (less the sampler
    thread) and every other process below the driver (Ray's own) by label."""
    parents = parents or {}
    actor_pids = {a.pid for a in actors}

    def owner(pid: int) -> int | None:  # the actor a process runs under, if any
        seen = set()
        while pid in parents and pid not in seen:
            seen.add(pid)
            pid = parents[pid]
            if pid in actor_pids:
                return pid
        return None

    children: dict[int, float] = defaultdict(float)
    others: dict[str, float] = defaultdict(float)
    for pid, own in series.items():
        if pid in actor_pids or pid in (driver_pid, SAMPLER):
            continue
        seconds = cpu_between(own, lo, hi, created.get(pid))
        actor_pid = owner(pid)
        if actor_pid is None:
            others[labels.get(pid, str(pid))] += seconds
        else:
            children[actor_pid] += seconds
    rows = []
    for actor in actors:
        own = series.get(actor.pid, [])
        total = cpu_between(own, lo, hi, created.get(actor.pid))
        methods = method_cpu(own, actor.intervals, lo, hi, created.get(actor.pid))
        rows.append(
            {
                "actor": actor.cls,
                "pid": actor.pid,
                "actor_id": actor.actor_id,
                "cpu_s": total + children[actor.pid],
                "methods": {m: {"wall_s": w, "cpu_s": c} for m, (w, c) in methods.items()},
                "outside_methods_cpu_s": total - sum(c for _, c in methods.values()),
                "children_cpu_s": children[actor.pid],
            }
        )
    sampler = cpu_between(series.get(SAMPLER, []), lo, hi)
    driver = cpu_between(series.get(driver_pid, []), lo, hi, created.get(driver_pid)) - sampler
    return {
        "actors": rows,
        "driver_cpu_s": driver,
        "ray_processes": dict(others),
        "sampler_cpu_s": sampler,
        "total_cpu_s": sum(r["cpu_s"] for r in rows) + driver + sum(others.values()),
    }


def mean_breakdown(steps: list[dict], phase_seconds: list[dict[str, float]], wall: list[float]) -> dict:
    """The mean over steps of :func:`step_breakdown` results (a mean, not a median: the rows add up to the
    total), aggregated per method and per phase (``phase_seconds``: the trainer's phase timers per step)."""
    n = len(steps)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / n

    actors = []
    for i, first in enumerate(steps[0]["actors"]):
        rows = [s["actors"][i] for s in steps]
        names = sorted({m for r in rows for m in r["methods"]})
        actors.append(
            {
                "actor": first["actor"],
                "pid": first["pid"],
                "actor_id": first["actor_id"],
                "cpu_s": mean(r["cpu_s"] for r in rows),
                "methods": {
                    m: {k: mean(r["methods"].get(m, {}).get(k, 0.0) for r in rows) for k in ("wall_s", "cpu_s")}
                    for m in names
                },
                "outside_methods_cpu_s": mean(r["outside_methods_cpu_s"] for r in rows),
                "children_cpu_s": mean(r["children_cpu_s"] for r in rows),
            }
        )
    methods: dict[str, dict] = {}
    for actor in actors:
        for name, value in actor["methods"].items():
            entry = methods.setdefault(name, {"phase": phase_of(name), "processes": 0, "wall_s": 0.0, "cpu_s": 0.0})
            entry["processes"] += 1
            entry["wall_s"] += value["wall_s"]
            entry["cpu_s"] += value["cpu_s"]
    phase_names = list(dict.fromkeys(name for p in phase_seconds for name in p))
    phases = {
        name: {
            "wall_s": mean(p.get(name, 0.0) for p in phase_seconds),
            "actor_cpu_s": sum(m["cpu_s"] for m in methods.values() if m["phase"] == name),
            "actor_methods": sorted(k for k, m in methods.items() if m["phase"] == name),
        }
        for name in phase_names
    }
    other = sum(m["cpu_s"] for m in methods.values() if m["phase"] not in phases)
    ray_processes = {
        label: mean(s["ray_processes"].get(label, 0.0) for s in steps)
        for label in sorted({label for s in steps for label in s["ray_processes"]})
    }
    actor_cpu = sum(a["cpu_s"] for a in actors)
    driver = mean(s["driver_cpu_s"] for s in steps)
    return {
        "statistic": f"mean of {n} measured steps (rows add up to the total)",
        "step_wall_s": mean(wall),
        "total_cpu_s": mean(s["total_cpu_s"] for s in steps),
        "actors_cpu_s": actor_cpu,
        "actor_methods_cpu_s": sum(m["cpu_s"] for m in methods.values()),
        "actors_outside_methods_cpu_s": sum(a["outside_methods_cpu_s"] for a in actors),
        "actors_children_cpu_s": sum(a["children_cpu_s"] for a in actors),
        "driver_cpu_s": driver,
        "ray_processes_cpu_s": sum(ray_processes.values()),
        # the driver/Ray remainder: everything that is not an actor process
        "overhead_cpu_s": driver + sum(ray_processes.values()),
        "sampler_cpu_s": mean(s["sampler_cpu_s"] for s in steps),
        "phases": phases,
        "other_methods_cpu_s": other,
        "methods": dict(sorted(methods.items(), key=lambda kv: -kv[1]["cpu_s"])),
        "actors": sorted(actors, key=lambda a: (a["actor"], -a["cpu_s"])),
        "ray_processes": ray_processes,
    }


def phase_of(method: str) -> str:
    return PHASE_OF_METHOD.get(method.rsplit(".", 1)[-1], "other")


# --- Ray ----------------------------------------------------------------------------------------------------
def ray_actors(events: list[dict]) -> list[Actor]:
    """This job's actors (alive or dead) with their process and their method executions in ``events`` (a
    ``ray.timeline()``); actor tasks carry their actor's id in their task id."""
    import ray
    from ray._private import state  # the actor table (actor -> pid); the public state API needs the dashboard

    table = state.actors()
    intervals: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for event in events:
        cat = event.get("cat", "")
        task_id = event.get("args", {}).get("task_id")
        if cat.startswith("task::") and event.get("ph") == "X" and task_id:
            actor_id = ray.TaskID.from_hex(task_id).actor_id().hex()
            start = event["ts"] / 1e6
            intervals[actor_id].append((cat.removeprefix("task::"), start, start + event["dur"] / 1e6))
    return [
        Actor(actor_id, info["ActorClassName"], info["Pid"], sorted(intervals.get(actor_id, []), key=lambda x: x[1]))
        for actor_id, info in table.items()
        if info.get("Pid")
    ]


# --- report -------------------------------------------------------------------------------------------------
def render(b: dict) -> str:
    total = b["total_cpu_s"] or float("nan")

    def row(name: str, cpu: float, extra: str = "") -> str:
        return f"| {name} | {cpu:.2f} | {100 * cpu / total:.1f} % | {extra} |"

    lines = [
        f"fgrlhf CPU seconds per PPO step ({b['statistic']}; step wall {b['step_wall_s']:.2f} s)",
        "",
        "| where | CPU s / step | share | wall s (phase timer / method executions) |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, phase in b["phases"].items():
        if phase["actor_methods"]:
            lines.append(row(f"phase {name}: actor methods", phase["actor_cpu_s"], f"{phase['wall_s']:.3f}"))
        else:  # no actor works in it: the driver's (its CPU is in the driver row)
            lines.append(f"| phase {name}: driver only | — | — | {phase['wall_s']:.3f} |")
    lines += [
        row("other actor methods", b["other_methods_cpu_s"]),
        row("actors outside their methods", b["actors_outside_methods_cpu_s"]),
        row("processes the actors started", b["actors_children_cpu_s"]),
        row("driver (less the sampler)", b["driver_cpu_s"]),
        row(
            "Ray's own processes",
            b["ray_processes_cpu_s"],
            ", ".join(
                f"{k} {v:.2f}" for k, v in sorted(b["ray_processes"].items(), key=lambda kv: -kv[1]) if v >= 0.005
            ),
        ),
        row("total", b["total_cpu_s"], f"sampler's own CPU excluded: {b['sampler_cpu_s']:.3f} s"),
        "",
        "| actor method | phase | processes | wall s (sum) | CPU s | CPU / wall |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in b["methods"].items():
        ratio = m["cpu_s"] / m["wall_s"] if m["wall_s"] else float("nan")
        lines.append(
            f"| {name} | {m['phase']} | {m['processes']} | {m['wall_s']:.3f} | {m['cpu_s']:.2f} | {ratio:.2f} |"
        )
    lines += [
        "",
        "| actor process | pid | CPU s / step | in methods | outside methods | processes it started |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for a in b["actors"]:
        inside = a["cpu_s"] - a["outside_methods_cpu_s"] - a["children_cpu_s"]
        lines.append(
            f"| {a['actor']} | {a['pid']} | {a['cpu_s']:.2f} | {inside:.2f} | {a['outside_methods_cpu_s']:.2f} "
            f"| {a['children_cpu_s']:.2f} |"
        )
    return "\n".join(lines)
