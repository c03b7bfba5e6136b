"""torch.distributed setup shared by every trainer.

The same commands run alone or under ``torchrun``: torchrun sets ``WORLD_SIZE``/``RANK``/
``LOCAL_RANK``, and we start NCCL on CUDA or gloo on the CPU. Rank 0 alone writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    world_size: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def from_main(self, value: Any) -> Any:
        """``value`` as rank 0 has it, on every rank (a picklable object; others pass None)."""
        if not self.is_distributed:
            return value
        box = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device: str | None = None) -> DistContext:
    """Joins the process group if torchrun started us; otherwise a single-process context.

    ``device`` forces "cpu" or "cuda"; by default CUDA is used when available.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device is None else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistContext(world_size, rank, local_rank, dev)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
