"""Distributed bookkeeping under ``torchrun``: the process group, the DDP wrapper, and the per-step reduction
that gives every rank the global loss sums, the global positive count and one decision to stop."""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on CUDA, gloo on CPU).

    Without ``WORLD_SIZE`` > 1 this is a single process and nothing is initialised.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not torch_dist.is_initialized():
        # a long timeout: rank 0 alone evaluates (--eval_every) while the others wait at a barrier
        torch_dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo",
                                      timeout=datetime.timedelta(hours=2))
    return info


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def process_device(device: torch.device, info: DistInfo) -> torch.device:
    """Under torchrun on GPUs each process drives the GPU of its local rank."""
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device, sync_bn: bool) -> nn.Module:
    """The module the loop calls: ``model`` itself, or DDP around it (SyncBatchNorm first when ``sync_bn``)."""
    if not info.enabled:
        return model
    if sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(stats: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``stats`` over ranks in place (a no-op for one process)."""
    if info.enabled:
        torch_dist.all_reduce(stats)
    return stats


def barrier(info: DistInfo) -> None:
    if info.enabled:
        torch_dist.barrier()
