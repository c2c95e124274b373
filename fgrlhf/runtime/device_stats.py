"""Per-actor GPU memory and utilisation: what each actor reports (:func:`device_stats`), how the trainers ask
for it once per step (:func:`collect`), its step-metric keys (:func:`gpu_metrics`) and its Ray dashboard
gauges (:func:`export_gauges`).

Keys per actor: ``mem_allocated_gib``, ``mem_reserved_gib`` (the process's CUDA caching allocator now),
``mem_peak_gib`` (the most allocated since the previous call: each call resets the peak, so a trainer asking
once per step sees each step's peak), ``mem_total_gib`` (the device's) and ``util_pct`` (NVML: the percent of
the last sample period, 1/6 to 1 s, in which a kernel ran on the device, whoever ran it; only where
``nvidia-ml-py`` is installed). Without CUDA the dict is empty: a CPU-only run logs no GPU keys.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray.util.metrics import Gauge

log = logging.getLogger(__name__)

GIB = 1024**3
ActorKey = tuple[str, int]  # (role, rank)

_gauges: dict[str, Gauge] = {}  # one per stat in this process, tagged by role and rank
_nvml_warned = False


def device_stats() -> dict[str, float]:
    """The calling process's device stats (see the module docstring); ``{}`` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {}
    stats: dict[str, float] = {}
    # A process that never used CUDA (a vLLM rollout actor: the engine computes in vLLM's worker process) has
    # no allocator stats, and asking for the device's would create a CUDA context, taking GPU memory. It
    # reports only the utilisation, which NVML measures per device and so covers the engine's worker. The
    # actor's GPU is device 0 (Ray lists only the assigned GPUs in CUDA_VISIBLE_DEVICES).
    device = 0
    if torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        stats = {
            "mem_allocated_gib": torch.cuda.memory_allocated(device) / GIB,
            "mem_reserved_gib": torch.cuda.memory_reserved(device) / GIB,
            "mem_peak_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "mem_total_gib": torch.cuda.get_device_properties(device).total_memory / GIB,
        }
        torch.cuda.reset_peak_memory_stats(device)
    try:
        stats["util_pct"] = float(torch.cuda.utilization(device))
    except ModuleNotFoundError:  # no nvidia-ml-py: torch cannot ask NVML
        pass
    except Exception as exc:  # NVML there but refusing, e.g. on a MIG slice: the memory stats still count
        _warn_nvml_once(exc)
    return stats


def _warn_nvml_once(exc: Exception) -> None:
    global _nvml_warned
    if not _nvml_warned:
        log.warning("GPU utilisation unavailable (%s: %s); logging memory only", type(exc).__name__, exc)
        _nvml_warned = True


def collect(actors: Mapping[ActorKey, Any]) -> dict[ActorKey, dict[str, float]]:
    """Every actor's ``device_stats()`` in one round trip (all submitted, then awaited). An actor that died
    is left out with a warning: the next phase's restart handling deals with it, a metric is not worth a
    failed step."""
    import ray
    from ray.exceptions import RayActorError

    refs = {key: actor.device_stats.remote() for key, actor in actors.items()}
    out = {}
    for (role, rank), ref in refs.items():
        try:
            out[role, rank] = ray.get(ref)
        except RayActorError as exc:
            log.warning("no device stats from %s %d (%s)", role, rank, str(exc).splitlines()[0])
    return out


def gpu_metrics(per_actor: Mapping[ActorKey, Mapping[str, float]]) -> dict[str, float]:
    """Step-metric keys ``gpu/<role><rank>/<stat>`` (e.g. ``gpu/policy0/mem_peak_gib``), sorted."""
    return {
        f"gpu/{role}{rank}/{stat}": float(value)
        for (role, rank), stats in sorted(per_actor.items())
        for stat, value in sorted(stats.items())
    }


def export_gauges(per_actor: Mapping[ActorKey, Mapping[str, float]]) -> None:
    """Set the Ray dashboard gauges ``fgrlhf_gpu_<stat>`` (tags ``role``, ``rank``), each created once."""
    from ray.util.metrics import Gauge

    for (role, rank), stats in per_actor.items():
        for stat, value in stats.items():
            if stat not in _gauges:
                _gauges[stat] = Gauge(
                    f"fgrlhf_gpu_{stat}", description=f"per-actor GPU {stat}", tag_keys=("role", "rank")
                )
            _gauges[stat].set(float(value), tags={"role": role, "rank": str(rank)})


def step_gpu_metrics(actors: Mapping[ActorKey, Any]) -> dict[str, float]:
    """One step's GPU metrics from ``actors`` (only those given a GPU), also set as gauges; ``{}`` and no Ray
    call when there are none (a CPU-only run)."""
    if not actors:
        return {}
    per_actor = collect(actors)
    export_gauges(per_actor)
    return gpu_metrics(per_actor)
