"""Multi-process training through ``torchrun``: NCCL on GPUs, gloo on CPU."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from lckd.errors import LCKDError

#: How long a rank may wait for the others. Rank 0 alone runs the teacher election, the meta step,
#: periodic validation and the final 15-subset evaluation while the other ranks wait at a collective;
#: on a full BraTS validation set that can pass the 10-minute default and kill the run.
TIMEOUT = datetime.timedelta(hours=3)


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(requested_device: str) -> Context:
    """Join the process group when started by torchrun (``WORLD_SIZE`` > 1) and pick the device."""
    from lckd.inference import resolve_device

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return Context(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def rank_batch_size(batch_size: int, world_size: int) -> int:
    """Each rank's share of the global ``batch_size``; refuses a batch the ranks cannot split evenly."""
    if batch_size % world_size:
        raise LCKDError(f"batch_size={batch_size}: the global batch must divide among the {world_size} "
                        f"processes (give a multiple of {world_size})")
    return batch_size // world_size


def broadcast(value: Any, context: Context) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not context.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def teardown(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
