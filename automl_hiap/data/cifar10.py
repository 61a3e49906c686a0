"""CIFAR-10 in any of its three layouts: the authors' python batches, JPEG archives, folders.

The python batches are raw pixels already and are read directly, uncached; JPEGs are decoded
once into the cache.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from automl_hiap.config import DataConfig
from automl_hiap.data.cache import cached
from automl_hiap.data.datasets import ImageTensors, Split
from automl_hiap.data.images import (
    decode_labelled,
    file_images,
    folder_images,
    is_image,
    require_root,
    tar_images,
)
from automl_hiap.errors import UserError

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
NATIVE_SIZE = 32


def read(config: DataConfig, split: Split) -> ImageTensors:
    """One split at native size, from the first layout found under ``data.root``."""
    root = require_root(config)
    batches = next(
        (d for d in (root / "cifar-10-batches-py", root) if (d / "data_batch_1").is_file()), None
    )
    if batches is not None:
        return read_pickles(batches, split)
    archive = root / f"cifar10_{split}_jpeg.tar.gz"
    if archive.is_file():
        return cached(
            f"cifar10-{split}",
            [archive],
            lambda: decode_labelled(
                tar_images(archive, _member_label(split)),
                CIFAR10_CLASSES,
                NATIVE_SIZE,
                f"{archive} (expected members {split}/<class>/*.jpg)",
            ),
        )
    folder = root / split
    if folder.is_dir():
        files = folder_images(folder, CIFAR10_CLASSES, f"data.root: {folder}")
        return cached(
            f"cifar10-{split}",
            [path for path, _ in files],
            lambda: decode_labelled(file_images(files), CIFAR10_CLASSES, NATIVE_SIZE, str(folder)),
        )
    other = "test" if split == "train" else "train"
    if (root / f"cifar10_{other}_jpeg.tar.gz").is_file() or (root / other).is_dir():
        raise UserError(
            f"data.root: CIFAR-10 in {root} lacks the {split} split "
            f"(expected cifar10_{split}_jpeg.tar.gz or {split}/<class>/)"
        )
    raise UserError(
        f"data.root: no CIFAR-10 found in {root} (expected cifar-10-batches-py/ with "
        "data_batch_1..5 and test_batch, cifar10_train_jpeg.tar.gz + cifar10_test_jpeg.tar.gz, "
        "or train/<class>/*.jpg + test/<class>/*.jpg)"
    )


def _member_label(split: Split) -> Callable[[str], str | None]:
    """Archive member ``…/<split>/<class>/<file>`` → class; anything else is skipped."""

    def label(name: str) -> str | None:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and is_image(name):
            return parts[-2]
        return None

    return label


class NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles: allow the numpy array machinery and nothing else."""

    _ALLOWED = frozenset({"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"})

    def find_class(self, module: str, name: str) -> Any:
        numpy_part = module.split(".")[0] == "numpy" and name in self._ALLOWED
        if numpy_part or (module, name) == ("_codecs", "encode"):  # protocol-2 bytes need it
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pickles(folder: Path, split: Split) -> ImageTensors:
    """The authors' ``data_batch_1..5`` (train) or ``test_batch`` (test), validated."""
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"data.root: CIFAR-10 batch {path} is missing")
        try:
            with open(path, "rb") as fh:
                batch = NumpyOnlyUnpickler(fh, encoding="bytes").load()
            data = np.asarray(_key(batch, "data"), dtype=np.uint8)
            label = np.asarray(_key(batch, "labels"), dtype=np.int64)
        except (OSError, EOFError, KeyError, ValueError, TypeError, pickle.UnpicklingError) as exc:
            raise UserError(f"data.root: {path} is not a CIFAR-10 python batch ({exc})") from None
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(label) != len(data):
            raise UserError(
                f"data.root: {path}: expected N×3072 uint8 data and N labels, got "
                f"{data.shape} and {label.shape}"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(label))
    all_labels = torch.cat(labels)
    if int(all_labels.min()) < 0 or int(all_labels.max()) >= len(CIFAR10_CLASSES):
        raise UserError(f"data.root: labels in {folder} are outside 0..9")
    return ImageTensors(torch.cat(images), all_labels, CIFAR10_CLASSES)


def _key(batch: Any, key: str) -> Any:
    """``batch[key]``, whether the pickle stored its keys as bytes or as str."""
    if not isinstance(batch, dict):
        raise TypeError(f"expected a dict, got {type(batch).__name__}")
    return batch[key.encode()] if key.encode() in batch else batch[key]
