"""Data parallel under ``torchrun``: joining the process group and the collective steps the
trainer needs beyond DDP (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor

from automl_hiap.placement import auto_device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init_distributed(device: torch.device | None = None) -> torch.device:
    """Join the process group when launched by torchrun (NCCL for a CUDA device, else gloo);
    return this process's device: ``device``, else torchrun's local GPU, the current GPU or the
    CPU (``placement.auto_device``)."""
    target = auto_device() if device is None else device
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    if target.type == "cuda":
        torch.cuda.set_device(target)
    return target


def is_main_process() -> bool:
    return not is_distributed() or dist.get_rank() == 0


def average_gradients(params: list[Tensor]) -> None:
    """Average the hooks' gradients over ranks in one all-reduce (DDP covers the model's)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for grad, chunk in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
        grad.copy_(chunk.view_as(grad))
