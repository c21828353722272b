"""Data-parallel training under ``torchrun``: the process group, and the few collective steps the loop takes.

The command line enters :func:`process_group` around training; :func:`distill.train.loop.train`
reads :meth:`DistInfo.current` and never joins or leaves a group itself, so a library
caller that has set up its own group keeps it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from distill.core.devices import resolve_device

if TYPE_CHECKING:
    from distill.train.config import TrainConfig


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the process group (one process, rank 0, outside ``torchrun``)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and reports."""
        return self.rank == 0

    @classmethod
    def current(cls) -> DistInfo:
        """The initialised process group's view of this process, or a single process when there is none."""
        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@contextlib.contextmanager
def process_group(device_name: str) -> Iterator[DistInfo]:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group for the block and leave it afterwards.

    The backend is nccl for a CUDA ``device_name`` and gloo otherwise; with CUDA, this
    process's GPU (LOCAL_RANK) is the current device inside the block, as NCCL needs.
    Outside ``torchrun``, or when a group is already initialised, nothing changes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield DistInfo.current()
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name.startswith("cuda")
    with contextlib.ExitStack() as stack:
        if cuda:
            stack.enter_context(torch.cuda.device(resolve_device(device_name, local_rank=local_rank)))
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        stack.callback(dist.destroy_process_group)
        yield DistInfo.current()


def all_mean(values: torch.Tensor, dist_info: DistInfo) -> torch.Tensor:
    """The mean of ``values`` over all processes (``values`` itself in a single process)."""
    if dist_info.world_size > 1:
        values = values.clone()
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist_info.world_size
    return values


def barrier(dist_info: DistInfo) -> None:
    """Wait for every process (nothing in a single process)."""
    if dist_info.world_size > 1:
        dist.barrier()


def wrap(student: nn.Module, config: TrainConfig, dist_info: DistInfo, device: torch.device) -> nn.Module:
    """The module the loop calls: ``student``, in DistributedDataParallel over several processes, compiled if configured."""
    model = student
    if dist_info.world_size > 1:
        model = DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model)
    return model
