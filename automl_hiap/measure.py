"""Measured speed of models, always side by side in one run (machines are noisy).

A figure from here is never one sample: every model gets warm-up passes, then ``repeats``
timed repeats, interleaved across the models in a rotating order so that a change of machine
load hits all of them alike. Each figure is the median over the repeats with its interquartile
range, and a ratio between two models (a speed-up) is taken repeat by repeat, from timings made
next to each other, before its median and range: the pairing cancels slow drifts of the load.
The 1-minute load average is recorded with the figures, so that a reader can tell a busy
machine from a slow model.

Where and how models run is the caller's :class:`~automl_hiap.placement.Placement` (the
search passes its trainer's): models and the input batch are moved there, forward passes run
under its autocast (bf16 on CUDA by default) and, with ``train.compile``, compiled. On a GPU the
timed regions are measured with CUDA events (the device's work, not the launch calls), after
warm-up passes that also absorb compilation and kernel selection.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from automl_hiap.placement import Placement

MIN_REPEATS = 3  # a median of fewer is one sample in disguise


@dataclass(frozen=True)
class Spread:
    """The median of repeated figures and their interquartile range (``low`` .. ``high``)."""

    median: float
    low: float
    high: float
    repeats: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        ordered = sorted(values)
        if len(ordered) == 1:
            return cls(ordered[0], ordered[0], ordered[0], 1)
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        return cls(statistics.median(ordered), q1, q3, len(ordered))

    def map(self, fn: Callable[[float], float]) -> Spread:
        """The same spread in another unit (a decreasing ``fn`` swaps low and high)."""
        ends = sorted((fn(self.low), fn(self.high)))
        return Spread(fn(self.median), ends[0], ends[1], self.repeats)

    @property
    def relative(self) -> float:
        """Interquartile range over the median: how much to trust the figure."""
        return (self.high - self.low) / self.median if self.median else float("inf")

    def describe(self, digits: int = 2) -> str:
        """``1.31 (IQR 1.25–1.36, 7 repeats)``."""
        return (
            f"{self.median:.{digits}f} (IQR {self.low:.{digits}f}–{self.high:.{digits}f}, "
            f"{self.repeats} repeats)"
        )


@dataclass(frozen=True)
class Measurement:
    """Seconds per forward pass of each model, over the same interleaved repeats."""

    seconds: dict[str, tuple[float, ...]]  # per model, one value per repeat
    batch: int
    load_average: float | None  # 1-minute load average when the measurement started

    def images_per_s(self, name: str) -> Spread:
        return Spread.of([self.batch / s for s in self.seconds[name]])

    def latency_ms(self, name: str) -> Spread:
        """Milliseconds per forward pass of a batch."""
        return Spread.of([1000.0 * s for s in self.seconds[name]])

    def speedup(self, name: str, reference: str) -> Spread:
        """How many times faster ``name`` is than ``reference``, paired repeat by repeat."""
        pairs = zip(self.seconds[reference], self.seconds[name], strict=True)
        return Spread.of([ref / s for ref, s in pairs])


def load_average() -> float | None:
    """The 1-minute load average (None where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


@torch.inference_mode()
def measure(
    models: Mapping[str, nn.Module],
    image_size: int,
    batch_size: int,
    repeats: int = 7,
    warmup: int = 2,
    min_seconds: float = 0.2,
    placement: Placement | None = None,
) -> Measurement:
    """Time every model's forward pass on one random batch (see the module docstring).

    A repeat runs enough passes to last ``min_seconds`` (counted once per model, after warm-up)
    and records their mean. Without ``placement`` the models run where the first one is, in
    fp32."""
    if repeats < 1:
        raise ValueError(f"expected at least one repeat, got {repeats}")
    where = placement if placement is not None else Placement.of(next(iter(models.values())))
    runnable = {name: where.compiled(where.module(model).eval()) for name, model in models.items()}
    x = where.tensor(torch.randn(batch_size, 3, image_size, image_size))
    return time_calls(
        {name: _bound(model, x) for name, model in runnable.items()},
        where,
        batch_size,
        repeats,
        warmup,
        min_seconds,
    )


def _bound(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    return lambda: model(x)


def time_calls(
    calls: Mapping[str, Callable[[], object]],
    where: Placement,
    batch_size: int,
    repeats: int = 7,
    warmup: int = 2,
    min_seconds: float = 0.2,
) -> Measurement:
    """The timing loop of :func:`measure` for any callables (the latency profiler times
    single branches with it)."""
    load = load_average()
    names = list(calls)
    with where.autocast():
        for call in calls.values():
            for _ in range(warmup):
                call()
        where.synchronize()
        iterations = {}
        for name, call in calls.items():  # enough iterations per repeat for a stable clock
            start, count = time.perf_counter(), 0
            while time.perf_counter() - start < min_seconds or count == 0:
                call()
                where.synchronize()  # a GPU: count finished passes, not queued ones
                count += 1
            iterations[name] = count
        timings: dict[str, list[float]] = {name: [] for name in calls}
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                call = calls[name]
                with where.timed() as timing:
                    for _ in range(iterations[name]):
                        call()
                timings[name].append(timing.seconds / iterations[name])
    return Measurement(
        seconds={name: tuple(values) for name, values in timings.items()},
        batch=batch_size,
        load_average=load,
    )


def throughput(
    models: Mapping[str, nn.Module],
    image_size: int,
    batch_size: int,
    repeats: int = 5,
    warmup: int = 2,
    min_seconds: float = 0.2,
    placement: Placement | None = None,
) -> dict[str, float]:
    """Median images per second of each model (:func:`measure` without the spread)."""
    result = measure(models, image_size, batch_size, repeats, warmup, min_seconds, placement)
    return {name: result.images_per_s(name).median for name in models}
