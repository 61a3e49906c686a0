"""The one table from ``data.format`` to its reader, and the entry points that look it up.

Adding a format is one entry in ``FORMATS`` plus its reader: an ``InMemoryFormat`` around a
``read(config, split)`` for data small enough to decode whole, or a ``LazyFormat`` around a
``build(config, seed)`` for data decoded per item.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from automl_hiap.config import DataConfig
from automl_hiap.data import cifar10, digits, imagefolder, synthetic, tiny_imagenet
from automl_hiap.data.datasets import DataSplits, ImageTensors, Split
from automl_hiap.data.splits import InMemoryFormat


class DataFormat(Protocol):
    """What ``build_datasets`` and ``load_split`` need from a format."""

    def build(self, config: DataConfig, seed: int) -> DataSplits: ...

    def load(self, config: DataConfig, split: Split) -> ImageTensors: ...


@dataclass(frozen=True)
class LazyFormat:
    """A format decoded per item by its datasets: it has no whole split to hand out."""

    build: Callable[[DataConfig, int], DataSplits]

    def load(self, config: DataConfig, split: Split) -> ImageTensors:
        raise ValueError(f"load_split: {config.format} data is decoded lazily, not held in memory")


FORMATS: dict[str, DataFormat] = {
    "imagefolder": LazyFormat(imagefolder.build),
    "cifar10": InMemoryFormat(cifar10.read),
    "tiny_imagenet": InMemoryFormat(tiny_imagenet.read),
    # a mirrored digit is another glyph (or none), and its background is black
    "digits": InMemoryFormat(digits.read, pools=digits.pools, flip=False, pad_mode="constant"),
    "synthetic": InMemoryFormat(synthetic.read),
}


def format_of(config: DataConfig) -> DataFormat:
    """The table entry for ``config.format``."""
    try:
        return FORMATS[config.format]
    except KeyError:  # pragma: no cover - the config's Literal forbids it
        raise ValueError(f"unknown data format {config.format!r}") from None


def build_datasets(config: DataConfig, seed: int = 0) -> DataSplits:
    """Train / held-out val / test datasets for ``config``; ``seed`` picks the val split.

    Raises UserError (naming the ``data.*`` key and the path) when the data cannot be found or
    read.
    """
    return format_of(config).build(config, seed)


def load_split(config: DataConfig, split: Split) -> ImageTensors:
    """One whole split of a small dataset as uint8 tensors (decoded once, then from the cache).

    Images are at ``min(native size, config.image_size)``. For ``digits``, ``train`` is the 80 %
    that is not the fixed test split. Not available for ``imagefolder`` (decoded lazily).
    """
    return format_of(config).load(config, split)
