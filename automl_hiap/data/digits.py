"""scikit-learn's 8×8 handwritten digits (real, bundled): one pool, a fixed 20 % test split.

Built in memory, uncached. The test split is carved with a fixed seed, so it is the same in
every run; only the val split moves with the run's seed.
"""

from __future__ import annotations

import numpy as np
import torch

from automl_hiap.config import DataConfig
from automl_hiap.data.datasets import ImageTensors, Split
from automl_hiap.data.splits import Pools, shrink, stratified_pick
from automl_hiap.errors import UserError

DIGITS_TEST_FRACTION = 0.2
FIXED_SPLIT_SEED = 0  # the test splits we carve ourselves must not move with the run's seed


def read(config: DataConfig, split: Split) -> ImageTensors:
    """``train`` is the 80 % that is not the fixed test split."""
    pool = _digits()
    train_idx, test_idx = _split(pool)
    idx = torch.as_tensor(train_idx if split == "train" else test_idx)
    return ImageTensors(pool.images[idx], pool.labels[idx], pool.class_names)


def pools(config: DataConfig) -> Pools:
    """One shared pool: train candidates and the test split are disjoint indices into it."""
    pool = shrink(_digits(), config.image_size)
    train_idx, test_idx = _split(pool)
    return Pools(pool, train_idx, pool, test_idx)


def _digits() -> ImageTensors:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise UserError(
            "data.format: digits needs scikit-learn (pip install scikit-learn)"
        ) from None
    bunch = load_digits()
    pixels = np.rint(np.asarray(bunch.images, dtype=np.float64) * (255.0 / 16.0))
    images = torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8))
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    images = images[:, None].expand(-1, 3, -1, -1).contiguous()
    return ImageTensors(images, labels, tuple(str(d) for d in range(10)))


def _split(pool: ImageTensors) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a stratified 20 % test split, the same in every run."""
    count = round(DIGITS_TEST_FRACTION * len(pool))
    rng = np.random.default_rng(FIXED_SPLIT_SEED)
    test_idx, train_idx = stratified_pick(pool.labels.numpy(), count, rng)
    return train_idx, test_idx
