"""The training recipe every phase shares: AdamW parameter groups, the warm-up + cosine
schedule and the distillation loss."""

from __future__ import annotations

import math
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

NO_DECAY_NDIM = 1  # biases, norm weights, layer scales, tokens of rank <= 1: no weight decay


def parameter_groups(
    model: nn.Module, weight_decay: float, extra: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only; hooks' groups keep their own settings and
    default to no weight decay (gate logits, scores)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= NO_DECAY_NDIM else decay).append(param)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    for group in extra:
        groups.append({"weight_decay": 0.0, **group})
    return [g for g in groups if g["params"]]


def warmup_cosine(total_steps: int, warmup_steps: int) -> Any:
    """LR factor: linear warm-up, then cosine to zero."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def distillation_loss(
    logits: Tensor,
    teacher_logits: Tensor,
    targets: Tensor,
    alpha: float,
    temperature: float,
    label_smoothing: float,
) -> Tensor:
    """(1 − α)·CE(y) + α·T²·KL(p_teacher ‖ p_student) at temperature T (Hinton et al.)."""
    hard = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    soft = F.kl_div(
        F.log_softmax(logits / temperature, -1),
        F.log_softmax(teacher_logits / temperature, -1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * hard + alpha * temperature**2 * soft
