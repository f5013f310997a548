"""Data-parallel training across processes (``torchrun``, DistributedDataParallel).

``core.training.fit`` trains data-parallel by itself when the process group is up: each of the
``world`` processes takes every ``world``-th image of the same global batch (all processes
shuffle with the same seed), attacks its share with the plain model, and back-propagates a loss
scaled so that DDP's gradient average equals the gradient of the global batch's mean loss (the
same update as one process, up to floating-point summation order).  BatchNorm statistics are
per process, as with the papers' own ``nn.DataParallel`` code.  Only rank 0 shows progress and
writes checkpoints.  Launch::

    torchrun --nproc_per_node 4 -m advlab train --dataset cifar10 --arch preact_resnet18 ...

``init_from_env`` starts the group from torchrun's environment (NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def active() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def init_from_env(backend: str | None = None) -> bool:
    """Start the process group if torchrun launched us (``WORLD_SIZE`` > 1); pin this process
    to its GPU (``LOCAL_RANK``) on CUDA.  Returns whether training is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return active()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return active()


def shard(x: torch.Tensor, y: torch.Tensor):
    """This process's share of a global batch: every ``world``-th example from ``rank``."""
    return x[rank()::world_size()], y[rank()::world_size()]


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` in DistributedDataParallel (gradients averaged across processes)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = next(model.parameters()).device
    return DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def all_sum(value: float) -> float:
    """Sum of a number over the processes (itself when not distributed)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())
