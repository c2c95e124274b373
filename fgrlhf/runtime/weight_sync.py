"""Weight push from policy learner rank 0 to the rollout actors over a dedicated process group.

The group is standalone (its own ``TCPStore`` and ``ProcessGroupGloo``/``ProcessGroupNCCL``), so it never
touches the learners' default DeepSpeed world: rank 0 is policy learner rank 0, ranks 1.. are rollout
actors. Tensors travel in flat same-dtype buckets of ``bucket_mb`` (one broadcast per bucket, not per
parameter); receivers learn names/shapes/dtypes from a ``layout`` the driver passes over Ray, so only raw
bytes cross the group. A restarted rollout actor joins a fresh group (new port and tag).

The backend is decided by the members themselves (:func:`choose_backend` over what each reports), never by
the driver, which may be a CPU-only head node. ``timeout_s`` bounds the rendezvous and every broadcast, so
a receiver that stops taking part makes the push fail instead of hanging the sender.
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
    """float64 sum of |x| + x·position-weight per tensor: cheap, order-sensitive fingerprints."""
    out = {}
    for name, tensor in named_tensors:
        flat = tensor.detach().reshape(-1).to(torch.float64).cpu()
        weights = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64)
        out[name] = float((flat * weights).sum() + flat.abs().sum())
    return out


class WeightSyncGroup:
    """One member of the push group; rank 0 hosts the store and sends, the others receive."""

    def __init__(self, address: str, port: int, rank: int, world_size: int, backend: str, tag: str, timeout_s: float):
        timeout = timedelta(seconds=timeout_s)
        store: dist.Store = dist.TCPStore(
            address, port, world_size, is_master=rank == 0, timeout=timeout, wait_for_workers=False
        )
        store = dist.PrefixStore(f"fgrlhf-weight-sync/{tag}", store)
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.device = torch.device("cuda" if backend == "nccl" else "cpu")
        self.group: Any  # torch's stubs give the per-backend groups no collectives; the bound classes have them
        if backend == "nccl":
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout  # the watchdog's limit per collective (torch's default: 10 min)
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, options)
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)
        self._store = store  # keep the master store alive as long as the group

    def _broadcast(self, flat: torch.Tensor) -> None:
        options = dist.BroadcastOptions()
        options.rootRank = 0
        self.group.broadcast([flat], options).wait()

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
