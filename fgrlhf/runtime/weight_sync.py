"""Weight push from policy learner rank 0 to the rollout actors over a dedicated process group.

The group is standalone (its own ``TCPStore`` and ``ProcessGroupGloo``/``ProcessGroupNCCL``), so it never
touches the learners' default DeepSpeed world: rank 0 is policy learner rank 0, ranks 1.. are rollout
actors. Tensors travel in flat same-dtype buckets of ``bucket_mb`` (one broadcast per bucket, not per
parameter); receivers learn names/shapes/dtypes from a ``layout`` the driver passes over Ray, so only raw
bytes cross the group. A restarted rollout actor joins a fresh group (new port and tag).

The backend is decided by the members themselves (:func:`choose_backend` over what each reports), never by
the driver, which may be a CPU-only head node. ``timeout_s`` bounds the rendezvous and every broadcast, so
a receiver that stops taking part makes the push fail instead of hanging the sender: each broadcast is
waited for on the CPU for at most ``timeout_s`` (under NCCL a plain ``wait()`` only orders the CUDA stream and
returns at once), and on a timeout the group is aborted and :class:`WeightPushError` raised, the same under
gloo and NCCL. NCCL's watchdog, which would kill the process instead, is given twice that as a backstop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

Layout = list[tuple[str, tuple[int, ...], str]]  # (name, shape, dtype name) in push order


class WeightPushError(RuntimeError):
    """A push failed for a reason other than a rollout actor's death: fatal to the run, which --resume continues."""


def layout_of(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Layout:
    return [(name, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for name, t in named_tensors]


def buckets(layout: Layout, bucket_mb: float) -> list[list[int]]:
    """Indices of ``layout`` grouped into consecutive same-dtype runs of at most ``bucket_mb`` (>= 1 tensor)."""
    limit = bucket_mb * 2**20
    groups: list[list[int]] = []
    size, dtype = 0, None
    for index, (_, shape, dtype_name) in enumerate(layout):
        nbytes = torch.Size(shape).numel() * getattr(torch, dtype_name).itemsize
        if not groups or dtype_name != dtype or size + nbytes > limit:
            groups.append([])
            size, dtype = 0, dtype_name
        groups[-1].append(index)
        size += nbytes
    return groups


def choose_backend(configured: str, members_have_cuda: list[bool]) -> str:
    """The push group's backend from what every member (sender first) reports about its own process.

    ``auto``: NCCL only when every member sees a GPU, else gloo over TCP. ``nccl`` where a member has no
    GPU is an error naming it (NCCL cannot run there).
    """
    if configured == "gloo":
        return "gloo"
    without = [rank for rank, cuda in enumerate(members_have_cuda) if not cuda]
    if configured == "nccl" and without:
        raise ValueError(
            f"weight_sync.backend=nccl, but push-group rank(s) {without} (0 = policy learner "
            "rank 0, then the rollout actors) see no GPU; use weight_sync.backend=gloo or auto"
        )
    return "gloo" if without else "nccl"


def checksums(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, float]:
    """float64 sum of |x| + x·position-weight per tensor: cheap, order-sensitive fingerprints. Summed by numpy,
    whose single-threaded pairwise sum gives the same bits in every process; torch's parallel sum depends on
    the process's thread count, which differs between actors and drivers."""
    import numpy as np

    out = {}
    for name, tensor in named_tensors:
        flat = tensor.detach().reshape(-1).to(torch.float64).cpu().numpy()
        weights = np.linspace(1.0, 2.0, flat.size, dtype=np.float64)
        out[name] = float(np.sum(flat * weights) + np.sum(np.abs(flat)))
    return out


class WeightSyncGroup:
    """One member of the push group; rank 0 hosts the store and sends, the others receive. ``close()`` it
    before the process exits."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, backend: str, tag: str, timeout_s: float):
        from fgrlhf.runtime.distributed import apply_nccl_env

        timeout = timedelta(seconds=timeout_s)
        self.timeout = timeout
        store: dist.Store = dist.TCPStore(
            address, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False
        )
        store = dist.PrefixStore(f"fgrlhf-weight-sync/{tag}", store)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device("cuda" if backend == "nccl" else "cpu")
        self.group: Any  # torch's stubs give the per-backend groups no collectives; the bound classes have them
        if backend == "nccl":
            apply_nccl_env()  # the same NCCL settings as the learner group and vLLM's worker
            options = dist.ProcessGroupNCCL.Options()
            # The watchdog's limit per collective (torch's default: 10 min) ends the process; the blocking
            # wait in _broadcast must time out first and abort the group, so the watchdog gets twice as long.
            options._timeout = 2 * timeout
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, options)
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        self._store = store  # keep the master store alive as long as the group

    def _broadcast(self, flat: torch.Tensor) -> None:
        if self.group is None:
            raise WeightPushError("the weight-push group is closed (aborted after a failed push): rebuild it")
        options = dist.BroadcastOptions()
        options.rootRank = 0
        try:
            self.group.broadcast([flat], options).wait(self.timeout)  # blocks the CPU, NCCL included
        except Exception as exc:
            self.close()  # a member is gone or stuck: the group cannot be used again, and NCCL's must not hang
            raise WeightPushError(
                f"weight-push broadcast ({self.backend}, rank {self.rank} of {self.world_size}) did not complete "
                f"within {self.timeout.total_seconds():g} s: {str(exc).strip().splitlines()[0]}"
            ) from exc

    def close(self) -> None:
        """Abort the group (never blocks, unlike a graceful NCCL shutdown whose peers may be gone); idempotent."""
        if self.group is not None:
            self.group.abort()
            self.group = None

    def send_bucket(self, tensors: Sequence[torch.Tensor]) -> None:
        """Rank 0: broadcast one bucket, the tensors of one ``buckets(layout, bucket_mb)`` group in order.

        The sender walks the buckets itself, so a ZeRO-3 learner gathers one bucket's parameters at a time.
        """
        self._broadcast(torch.cat([t.detach().to(self.device).reshape(-1) for t in tensors]))

    def receive(self, layout: Layout, bucket_mb: float) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks >= 1: yield ``(name, tensor)`` as each bucket arrives (consume fully: the sender blocks)."""
        for group in buckets(layout, bucket_mb):
            shapes = [torch.Size(layout[i][1]) for i in group]
            flat = torch.empty(
                sum(s.numel() for s in shapes), dtype=getattr(torch, layout[group[0]][2]), device=self.device
            )
            self._broadcast(flat)
            offset = 0
            for index, shape in zip(group, shapes):
                yield layout[index][0], flat[offset : offset + shape.numel()].view(shape)
                offset += shape.numel()
