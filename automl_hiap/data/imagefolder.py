"""ImageNet-style ``train/<class>/`` + ``val/<class>/`` folders, decoded lazily per item.

Too large to hold in memory, so items are decoded on access with timm's transforms (its
training augmentation when ``data.augment``); ``val`` is held out of ``train``, ``test`` is
``val/``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from automl_hiap.config import DataConfig
from automl_hiap.data.datasets import DataSplits, ImageFileDataset
from automl_hiap.data.images import is_image, require_root
from automl_hiap.data.splits import check_num_classes, hold_out
from automl_hiap.errors import UserError


def build(config: DataConfig, seed: int) -> DataSplits:
    """Train / held-out val / test over the image files under ``data.root``."""
    from timm.data import create_transform

    root = require_root(config)
    train_dir, test_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise UserError(
            f"data.root: no ImageFolder data in {root} (expected train/<class>/ and "
            "val/<class>/ folders of images)"
        )
    class_names = tuple(sorted(d.name for d in os.scandir(train_dir) if d.is_dir()))
    if not class_names:
        raise UserError(f"data.root: {train_dir} has no class folders")
    check_num_classes(config, class_names)
    index = {name: i for i, name in enumerate(class_names)}
    train_samples = _scan_class_folders(train_dir, index)
    test_samples = _scan_class_folders(test_dir, index)
    labels = np.array([label for _, label in train_samples], dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = hold_out(labels, np.arange(len(labels)), config, rng)

    common: dict[str, Any] = dict(
        input_size=config.image_size,
        mean=tuple(config.mean),
        std=tuple(config.std),
        interpolation="bicubic",
        crop_pct=0.875,
    )
    eval_tf = create_transform(is_training=False, **common)
    train_tf = create_transform(is_training=True, **common) if config.augment else eval_tf
    return DataSplits(
        train=ImageFileDataset(train_samples, train_idx, train_tf),
        val=ImageFileDataset(train_samples, val_idx, eval_tf),
        test=ImageFileDataset(test_samples, np.arange(len(test_samples)), eval_tf),
        num_classes=len(class_names),
        class_names=class_names,
    )


def _scan_class_folders(split_dir: Path, index: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) for every image in ``split_dir/<class>/``, sorted; unknown classes fail."""
    samples: list[tuple[str, int]] = []
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        if entry.name not in index:
            raise UserError(
                f"data.root: class folder {entry.path} is not among the {len(index)} classes "
                f"of {split_dir.parent / 'train'}"
            )
        files = sorted(f.path for f in os.scandir(entry.path) if f.is_file() and is_image(f.name))
        samples.extend((path, index[entry.name]) for path in files)
    if not samples:
        raise UserError(f"data.root: no images in {split_dir}/<class>/")
    return samples
