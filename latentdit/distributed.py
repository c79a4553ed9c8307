"""Data-parallel training under ``torchrun``: process group, rank roles and reductions.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; when ``WORLD_SIZE > 1`` the process group
is initialised with NCCL when the run uses CUDA and gloo otherwise. Without ``torchrun`` everything
here is a no-op on a single process (rank 0 of 1).

How a global batch is split (see :meth:`latentdit.train.Trainer.train_step`): every rank draws the
*same* global batch of indices, times and noise from the same seeded streams and keeps its own
contiguous slice of ``batch_size / world_size`` items. Gradients are averaged by DDP, so a step on N
ranks equals a single-process step on the whole global batch up to floating-point summation order.

Restarts (``torchrun --max-restarts N``): when a worker dies, torchrun stops the others and starts
all of them again, and ``latentdit train --out RUN`` resumes from the newest checkpoint. The
restarted workers meet in the same torchrun store as the failed attempt, so the process group is
set up under a key prefix of its own per attempt (``TORCHELASTIC_RESTART_COUNT``): otherwise a new
worker can read the address of a dead one and fail to connect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from latentdit.errors import ConfigError


@dataclass
class DistContext:
    """Where this process stands: rank ``rank`` of ``world_size`` (rank 0 is the only writer)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # this context initialised the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """All-reduced mean over ranks (the value itself on one process)."""
        if not self.enabled:
            return value
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on some rank (keeps ranks' control flow in step)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def shutdown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def wants_cuda(device: str) -> bool:
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def init_distributed(device: str = "auto") -> DistContext:
    """Join the ``torchrun`` process group if there is one (``WORLD_SIZE > 1``), else a 1-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = wants_cuda(device)
    if cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device!r} but CUDA is not available; use 'cpu' or 'auto'")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPUs are visible; "
                              "lower --nproc_per_node")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, store=_attempt_store(rank, world), rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, backend=backend, owns_group=owns)


def _attempt_store(rank: int, world: int) -> dist.Store:
    """The ``env://`` rendezvous store, its keys prefixed by the torchrun attempt (see the module docstring)."""
    store, _, _ = next(dist.rendezvous("env://", rank=rank, world_size=world))
    return dist.PrefixStore(f"latentdit/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def rank_device(ctx: DistContext, device: torch.device) -> torch.device:
    """Each rank uses its own GPU (``cuda:LOCAL_RANK``); CPU ranks share the CPU."""
    if ctx.enabled and device.type == "cuda":
        return torch.device("cuda", ctx.local_rank)
    return device
