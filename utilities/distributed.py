"""torch.distributed helpers for `torchrun` launches (DDP): set-up, rank queries, gathering.

A single process is world size 1 and every helper is a no-op, so the training code has one path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that `torchrun` describes in the environment (NCCL on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the gradient of its own slice.

    The slice gradient is multiplied by the world size: DDP then averages the backbone gradients over ranks,
    which turns them into the sum over slices, i.e. exactly the gradient of one process that sees the whole
    global batch.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world_size = dist.get_world_size()
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rank, ctx.world_size, ctx.rows = dist.get_rank(), world_size, tensor.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        start = ctx.rank * ctx.rows
        return grad[start : start + ctx.rows] * ctx.world_size


def gather_batch(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every rank's equally sized slice in rank order (gradient flows back to the local slice)."""
    if not info.enabled:
        return tensor
    if tensor.requires_grad:
        return _GatherWithGrad.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


def gather_uneven(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate slices of different lengths (evaluation shards) in rank order; no gradient."""
    if not info.enabled:
        return tensor
    length = torch.tensor([tensor.shape[0]], device=tensor.device)
    lengths = [torch.zeros_like(length) for _ in range(info.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(info.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n)] for part, n in zip(parts, lengths)], dim=0)


def broadcast_object(value: object, info: DistInfo) -> object:
    """Rank 0's value on every rank."""
    if not info.enabled:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def gather_objects(value: object, info: DistInfo) -> list[object]:
    """Every rank's value, in rank order, on every rank (`[value]` in a single process)."""
    if not info.enabled:
        return [value]
    values: list[object] = [None] * info.world_size
    dist.all_gather_object(values, value)
    return values


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
