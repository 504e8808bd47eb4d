"""DDP plumbing from torchrun's environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT): gloo on CPU, nccl on CUDA. Outside torchrun everything degrades to one process.

    torchrun --nproc_per_node 2 -m genloom ...     # or any script that calls trainer.fit

Rank 0 alone writes files and prints; `is_main()` says whether this process is it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from genloom.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int  # global rank of this process (0 writes files and prints)
    local_rank: int  # rank on this machine (picks the GPU)
    world_size: int  # number of processes
    device: torch.device  # where this process trains

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def setup(device: str | torch.device | None = None) -> DistInfo:
    """Join the process group torchrun describes (once), pick this rank's device.

    Args:
        device: force a device ("cpu", "cuda"); default: CUDA when available, else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local = int(os.environ.get("LOCAL_RANK", 0))
    want = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    if want.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device cuda asked for, but torch sees no GPU")
        want = torch.device("cuda", local if world > 1 else (want.index or 0))
        torch.cuda.set_device(want)
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            raise UserError("WORLD_SIZE > 1 but no MASTER_ADDR: launch with torchrun")
        dist.init_process_group(backend="nccl" if want.type == "cuda" else "gloo")
    return DistInfo(rank=rank, local_rank=local, world_size=world, device=want)


def is_main() -> bool:
    """True on rank 0 (and in a single process)."""
    return not dist.is_initialized() or dist.get_rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum `t` over ranks in place (a no-op in a single process); returns `t`."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `t` with rank `src`'s value on every rank (no-op alone); returns `t`."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast(t, src=src)
    return t


def gather_objects(obj: object) -> list[object]:
    """Every rank's `obj` on every rank (in-memory transport only; nothing touches disk)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every rank (no-op alone)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group if this process joined one."""
    if dist.is_initialized():
        dist.destroy_process_group()
