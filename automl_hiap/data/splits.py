"""Train / held-out val / test: seeded stratified picks, and the splits of in-memory formats.

Search decisions must never see the test data, so ``val`` is a seeded, stratified slice of the
*training* data (``data.val_fraction``) and ``test`` is the dataset's own test split. Only
``val`` (and a ``train_subset``) moves with the run's seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from automl_hiap.config import DataConfig
from automl_hiap.data.datasets import DataSplits, ImageTensors, PadMode, Split, TensorImageDataset
from automl_hiap.errors import UserError


class Pools(NamedTuple):
    """Where the splits come from: the train pool and its candidates, the test pool and its
    indices (the same pool twice when a dataset has no test split of its own)."""

    train: ImageTensors
    candidates: np.ndarray
    test: ImageTensors
    test_indices: np.ndarray


@dataclass(frozen=True)
class InMemoryFormat:
    """A format whose splits are decoded whole into uint8 tensors by ``read``.

    ``pools`` replaces the default (the format's own train and test splits) for a dataset that
    carves its test split out of one pool. ``flip`` and ``pad_mode`` shape the train
    augmentation.
    """

    read: Callable[[DataConfig, Split], ImageTensors]
    pools: Callable[[DataConfig], Pools] | None = None
    flip: bool = True
    pad_mode: PadMode = "reflect"

    def load(self, config: DataConfig, split: Split) -> ImageTensors:
        """One split at ``min(native size, config.image_size)``."""
        return shrink(self.read(config, split), config.image_size)

    def build(self, config: DataConfig, seed: int) -> DataSplits:
        """Train / val / test datasets sharing the pools' image tensors."""
        train_pool, candidates, test_pool, test_indices = self._pools(config)
        check_num_classes(config, train_pool.class_names)
        rng = np.random.default_rng(seed)
        train_idx, val_idx = hold_out(train_pool.labels.numpy(), candidates, config, rng)
        common: dict[str, Any] = dict(
            image_size=config.image_size, mean=config.mean, std=config.std
        )
        train = TensorImageDataset(
            train_pool.images,
            train_pool.labels,
            train_idx,
            augment=config.augment,
            flip=self.flip,
            pad_mode=self.pad_mode,
            **common,
        )
        val = TensorImageDataset(train_pool.images, train_pool.labels, val_idx, **common)
        test = TensorImageDataset(test_pool.images, test_pool.labels, test_indices, **common)
        names = train_pool.class_names
        return DataSplits(
            train=train, val=val, test=test, num_classes=len(names), class_names=names
        )

    def _pools(self, config: DataConfig) -> Pools:
        if self.pools is not None:
            return self.pools(config)
        test = self.load(config, "test")  # first: smaller, so a broken layout fails fast
        train = self.load(config, "train")
        if test.class_names != train.class_names:
            raise UserError(f"data.root: train and test splits of {config.root} differ in classes")
        return Pools(train, np.arange(len(train)), test, np.arange(len(test)))


def hold_out(
    labels: np.ndarray, candidates: np.ndarray, config: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``candidates`` into (train, val), then keep ``train_subset`` of train."""
    n = len(candidates)
    if n < 2:
        raise UserError(
            f"data.val_fraction: {n} training image(s): too few to hold out a val split"
        )
    n_val = min(n - 1, max(1, round(config.val_fraction * n)))
    val_pos, train_pos = stratified_pick(labels[candidates], n_val, rng)
    train_idx, val_idx = candidates[train_pos], candidates[val_pos]
    if config.train_subset is not None and config.train_subset < len(train_idx):
        keep, _ = stratified_pick(labels[train_idx], config.train_subset, rng)
        train_idx = train_idx[keep]
    return train_idx, val_idx


def stratified_pick(
    labels: np.ndarray, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted positions of ``count`` labels drawn per class in proportion, and of the rest.

    Classes get ``floor(share)`` each and the leftover picks go to the largest remainders (ties
    broken at random), so the total is exact and every class is represented fairly.
    """
    n = len(labels)
    count = min(max(count, 0), n)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = counts * (count / n) if n else counts * 0.0
    take = np.floor(quota).astype(np.int64)
    leftover = count - int(take.sum())
    if leftover > 0:
        order = np.lexsort((rng.random(len(counts)), -(quota - take)))
        take[order[:leftover]] += 1
    shuffled = rng.permutation(n)
    grouped = shuffled[np.argsort(inverse[shuffled], kind="stable")]  # by class, random within
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(n) - starts[inverse[grouped]]
    chosen = rank < take[inverse[grouped]]
    return np.sort(grouped[chosen]), np.sort(grouped[~chosen])


def check_num_classes(config: DataConfig, names: tuple[str, ...]) -> None:
    """A configured ``data.num_classes`` must match the data's own class count."""
    if config.num_classes is not None and config.num_classes != len(names):
        raise UserError(
            f"data.num_classes: {config.num_classes} does not match the {len(names)} classes "
            f"of the {config.format} data" + (f" in {config.root}" if config.root else "")
        )


def shrink(tensors: ImageTensors, size: int) -> ImageTensors:
    """Down-sample once in memory (antialiased bicubic); up-sampling happens per item.

    Up-sampling per item keeps only native-size images in memory, so every ``image_size``
    shares one cache entry and a large ``image_size`` does not multiply the memory held.
    """
    images = tensors.images
    if images.shape[-1] <= size and images.shape[-2] <= size:
        return tensors
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], 2048):
        chunk = images[start : start + 2048].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bicubic", antialias=True)
        out[start : start + 2048] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return ImageTensors(out, tensors.labels, tensors.class_names)
