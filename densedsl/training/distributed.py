"""The process group `torchrun` describes, seen by one process: who it is, and the few collective
steps training needs (sums across ranks, rank 0's decision, everyone's RNG state)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True, slots=True)
class Dist:
    """Where this process stands in the group (one process: world 1, rank 0)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    created: bool = False  # this call initialised the process group and must destroy it

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device_kind: str) -> Dist:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, ...)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return Dist()
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_initialized():
        return Dist(dist.get_world_size(), dist.get_rank(), local)
    if device_kind == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return Dist(world, rank, local, created=True)


def all_sum(values: list[float], dd: Dist, device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dd.active:
        dist.all_reduce(t)
    return t.tolist()



def agree(flag: bool, dd: Dist, device: torch.device) -> bool:
    """Rank 0's decision, so every rank leaves the loop together."""
    if not dd.active:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, 0)
    return bool(t.item())


def gather(value: Any, dd: Dist) -> list[Any]:
    """Every rank's `value`, in rank order (a list of one without a process group)."""
    if not dd.active:
        return [value]
    values: list[Any] = [None] * dd.world
    dist.all_gather_object(values, value)
    return values
