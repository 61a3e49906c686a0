"""Measured speed of models, always side by side in one run (machines are noisy).

Where and how models run is the caller's :class:`~automl_hiap.placement.Placement` (the
search passes its trainer's): models and the input batch are moved there, forward passes run
under its autocast (bf16 on CUDA by default) and, with ``train.compile``, compiled. On a GPU the
timed regions are measured with CUDA events (the device's work, not the launch calls), after
warm-up passes that also absorb compilation and kernel selection.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn

from automl_hiap.placement import Placement


@torch.inference_mode()
def throughput(
    models: Mapping[str, nn.Module],
    image_size: int,
    batch_size: int,
    repeats: int = 5,
    warmup: int = 2,
    min_seconds: float = 0.2,
    placement: Placement | None = None,
) -> dict[str, float]:
    """Images per second of each model. Repeats are interleaved across models, in a rotating
    order, so that machine noise hits all of them alike; the median repeat is reported.
    Without ``placement`` the models run where the first one is, in fp32."""
    where = placement if placement is not None else Placement.of(next(iter(models.values())))
    runnable = {name: where.compiled(where.module(model).eval()) for name, model in models.items()}
    x = where.tensor(torch.randn(batch_size, 3, image_size, image_size))
    names = list(runnable)
    with where.autocast():
        for model in runnable.values():
            for _ in range(warmup):
                model(x)
        where.synchronize()
        iterations = {}
        for name, model in runnable.items():  # enough iterations per repeat for a stable clock
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < min_seconds or count == 0:
                model(x)
                where.synchronize()  # a GPU: count finished passes, not queued ones
                count += 1
            iterations[name] = count
        timings: dict[str, list[float]] = {name: [] for name in runnable}
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                model = runnable[name]
                with where.timed() as timing:
                    for _ in range(iterations[name]):
                        model(x)
                timings[name].append(timing.seconds / iterations[name])
    return {name: batch_size / statistics.median(times) for name, times in timings.items()}
