"""Measured speed of models, always side by side in one run (this machine is noisy)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn


@torch.inference_mode()
def throughput(
    models: Mapping[str, nn.Module],
    image_size: int,
    batch_size: int,
    repeats: int = 5,
    warmup: int = 2,
    min_seconds: float = 0.2,
) -> dict[str, float]:
    """Images per second of each model; repeats are interleaved across models so that machine
    noise hits all of them alike, and the median repeat is reported."""
    device = next(next(iter(models.values())).parameters()).device
    x = torch.randn(batch_size, 3, image_size, image_size, device=device)
    for model in models.values():
        model.eval()
        for _ in range(warmup):
            model(x)
    iterations = {}
    for name, model in models.items():  # enough iterations per repeat for a stable clock
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < min_seconds or count == 0:
            model(x)
            count += 1
        iterations[name] = count
    timings: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(iterations[name]):
                model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings[name].append((time.perf_counter() - start) / iterations[name])
    return {name: batch_size / statistics.median(times) for name, times in timings.items()}
