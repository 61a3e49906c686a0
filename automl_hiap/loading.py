"""Batches that keep an accelerator fed: worker settings, per-item seeds, copies ahead of use.

* **Workers** (``train.num_workers`` > 0) decode and augment in parallel; with
  ``persistent_workers`` (default) they live as long as the trainer, not one epoch, and each
  loads ``prefetch_factor`` batches ahead. Batches are page-locked (``pin_memory``, default on
  CUDA) so host-to-device copies are asynchronous.
* **Per-item seeds.** With workers, which random crop or flip an image gets would depend on
  which worker loaded it and on how long the worker lived. Here the sampler sends each worker
  ``(seed, index)`` pairs (:class:`EpochOrder`) and the item reseeds the RNGs from the key
  (:class:`SeededItems`) before it is augmented: the batches depend only on (seed, epoch), not
  on the number of workers or their lifetime, so a resumed run is exact with persistent
  workers too. Without workers the trainer keeps its original loader (the same numbers as
  before this module).
* **Copies ahead** (:func:`device_batches`): on CUDA the copy of batch i+1 runs on a side
  stream while batch i computes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from automl_hiap.config import TrainConfig
from automl_hiap.placement import Placement

_MASK = (1 << 63) - 1


def loader_settings(config: TrainConfig, placement: Placement) -> dict[str, Any]:
    """DataLoader keyword arguments for the run's workers and device."""
    settings: dict[str, Any] = {
        "num_workers": config.num_workers,
        "pin_memory": placement.pin_memory,
    }
    if config.num_workers > 0:
        settings["persistent_workers"] = config.persistent_workers
        if config.prefetch_factor is not None:
            settings["prefetch_factor"] = config.prefetch_factor
    return settings


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The RNG seed of one item in one epoch (a 63-bit mix of the three)."""
    value = (seed * 1_000_003 + epoch) & _MASK
    value = (value * 6_364_136_223_846_793_005 + index * 1_442_695_040_888_963_407) & _MASK
    return value ^ (value >> 29)


class EpochOrder(Sampler[tuple[int, int]]):
    """An epoch's shuffled order, a function of (seed, epoch) alone, as ``(item seed, index)``
    pairs; with ``world`` > 1 this rank's share (every index once per epoch across ranks,
    the remainder dropped, as ``DistributedSampler(drop_last=True)`` does)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.size, self.seed, self.rank, self.world = size, seed, rank, world
        self.per_rank = size // world if world > 1 else size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator).tolist()
        if self.world > 1:
            order = order[: self.per_rank * self.world][self.rank :: self.world]
        for index in order:
            yield item_seed(self.seed, self.epoch, index), index


class SeededItems(Dataset[Any]):
    """``dataset[index]`` with Python's, NumPy's and torch's RNGs seeded from the key first."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.random.default_generator.manual_seed(seed)  # the host generator only
        return self.dataset[index]


class Shard(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``size`` items in order: each rank evaluates
    its share once, and the sums over ranks are the whole split's."""

    def __init__(self, size: int, rank: int, world: int) -> None:
        self.indices = range(rank, size, world)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def device_batches(batches: Iterable[Any], placement: Placement) -> Iterator[tuple[Tensor, ...]]:
    """The tensors of each batch on ``placement``'s device. On CUDA each batch is copied on a
    side stream one step ahead, so copies overlap with the previous step's compute."""
    if not placement.is_cuda:
        for batch in batches:
            yield placement.batch(*batch)
        return
    stream = torch.cuda.Stream(placement.device)
    source = iter(batches)

    def issue() -> tuple[Tensor, ...] | None:
        batch = next(source, None)
        if batch is None:
            return None
        with torch.cuda.stream(stream):
            return placement.batch(*batch)

    ahead = issue()
    while ahead is not None:
        current_stream = torch.cuda.current_stream(placement.device)
        current_stream.wait_stream(stream)
        for tensor in ahead:
            tensor.record_stream(current_stream)  # its memory is used on the compute stream
        current, ahead = ahead, issue()
        yield current
