"""Synthetic stripes: a dataset with no files and no downloads, for tests and smoke runs."""

from __future__ import annotations

import math

import torch

from automl_hiap.config import DataConfig
from automl_hiap.data.datasets import ImageTensors, Split

SYNTHETIC_TRAIN, SYNTHETIC_TEST = 512, 128


def read(config: DataConfig, split: Split) -> ImageTensors:
    """Class = colour + stripe direction/frequency, with a random phase and pixel noise.

    Fixed seeds: the data are the same in every run; only the val split moves with ``seed``.
    Easy on purpose (the colour alone nearly separates the classes), so a tiny ViT learns it
    within a few epochs and tests can check that training helps. Drawn at ``image_size``, so
    nothing is resized.
    """
    num_classes = config.num_classes or 10
    if split == "train":
        n, seed = SYNTHETIC_TRAIN, 1
        if config.train_subset is not None:
            needed = math.ceil(config.train_subset / (1.0 - config.val_fraction)) + num_classes
            n = max(n, needed)
    else:
        n, seed = max(SYNTHETIC_TEST, 2 * num_classes), 2
    size = config.image_size
    palette = torch.rand(num_classes, 3, generator=torch.Generator().manual_seed(0)) * 0.7 + 0.15
    gen = torch.Generator().manual_seed(seed)
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
    frequency = 1.0 + ((torch.arange(num_classes) // 2) % 3).float()
    phase = torch.rand(n, generator=gen) * (2 * math.pi)
    coords = torch.arange(size, dtype=torch.float32) / size
    wave = torch.sin(2 * math.pi * frequency[labels, None] * coords + phase[:, None])  # n×S
    vertical = (labels % 2 == 0)[:, None, None]
    pattern = torch.where(vertical, wave[:, None, :], wave[:, :, None])  # n×S×S
    image = palette[labels][:, :, None, None] * (0.65 + 0.35 * pattern[:, None])
    image = image + 0.08 * torch.randn(n, 3, size, size, generator=gen)
    pixels = (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    return ImageTensors(pixels, labels, tuple(f"class_{i}" for i in range(num_classes)))
