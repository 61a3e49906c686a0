"""Datasets for search and fine-tuning: train / held-out val / test, as torch Datasets.

Three splits, because search decisions must never see the test data: ``val`` is a seeded,
stratified slice of the *training* data (``data.val_fraction``) and ``test`` is the dataset's own
test (or official val) split.

Small datasets (CIFAR-10, Tiny-ImageNet) are decoded from JPEG once into uint8 tensors and
cached on disk (``$AUTOML_HIAP_CACHE``, else ``$XDG_CACHE_HOME/automl_hiap`` or
``~/.cache/automl_hiap``), keyed by the source files' names, sizes and mtimes: decoding is then
paid once per machine, not once per run or per epoch, and reading the cache takes a fraction of
a second. The cache holds images at their native size, so every ``image_size`` shares it:
smaller sizes are resized once in memory, larger ones per item (a 224-px CIFAR-10 held in
memory would take 7.5 GB). The authors' CIFAR-10 python batches are raw pixels already and are
read directly, uncached; ``digits`` and ``synthetic`` are built in memory, uncached.
ImageNet-style ``imagefolder`` data is decoded lazily, per item, with timm's transforms.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import pickle
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from automl_hiap.config import DataConfig
from automl_hiap.errors import UserError

__all__ = [
    "CIFAR10_CLASSES",
    "DataSplits",
    "ImageFileDataset",
    "ImageTensors",
    "TensorImageDataset",
    "build_datasets",
    "cache_dir",
    "load_split",
]

log = logging.getLogger(__name__)

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
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
CACHE_VERSION = 1
DIGITS_TEST_FRACTION = 0.2
FIXED_SPLIT_SEED = 0  # the test splits we carve ourselves must not move with the run's seed
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 512, 128
_CIFAR_NATIVE, _TINY_NATIVE = 32, 64

Split = Literal["train", "test"]


@dataclass(frozen=True)
class DataSplits:
    """The three splits and the label space; items are (normalized float C×H×W, int label)."""

    train: Dataset[tuple[torch.Tensor, int]]
    val: Dataset[tuple[torch.Tensor, int]]
    test: Dataset[tuple[torch.Tensor, int]]
    num_classes: int
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class ImageTensors:
    """A whole split in memory: uint8 N×3×H×W images, int64 labels, class names by index."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


class TensorImageDataset(Dataset[tuple[torch.Tensor, int]]):
    """Items ``indices`` of an in-memory uint8 image tensor, normalized on access.

    Training augmentation (``augment``): random crop from a padded image (4 px per 32 px, reflect
    or zero padding) and, with ``flip``, a horizontal flip. Images stored smaller than
    ``image_size`` are up-sampled (bicubic) after augmentation. Several datasets share one
    ``images`` tensor, so the splits cost no extra memory.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: torch.Tensor | np.ndarray | Sequence[int],
        *,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool = False,
        flip: bool = True,
        pad_mode: Literal["reflect", "constant"] = "reflect",
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 N×3×H×W images, got {images.dtype} {images.shape}")
        self.images = images
        self.indices = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        self.labels = labels[self.indices].to(torch.long)
        self._label_list: list[int] = self.labels.tolist()
        self.image_size = image_size
        self.augment = augment
        self.flip = flip
        self.pad_mode = pad_mode
        self.padding = max(1, round(4 * images.shape[-1] / 32))
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        x = self.images[self.indices[item]].float()
        if self.augment:
            x = self._random_crop_flip(x)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            size = (self.image_size, self.image_size)
            x = F.interpolate(x[None], size=size, mode="bicubic", align_corners=False)[0]
            x = x.clamp_(0.0, 255.0)
        return x.mul_(self._scale).sub_(self._shift), self._label_list[item]

    def _random_crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w = x.shape
        p = self.padding
        padded = F.pad(x, (p, p, p, p), mode=self.pad_mode)
        top, left = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
        x = padded[:, top : top + h, left : left + w]
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        return x.contiguous()


class ImageFileDataset(Dataset[tuple[torch.Tensor, int]]):
    """Image files decoded lazily with PIL and passed through a (timm) transform."""

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        indices: np.ndarray | Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
    ) -> None:
        self.samples = samples
        self.indices = np.asarray(indices, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[int(self.indices[item])]
        with Image.open(path) as image:
            return self.transform(image.convert("RGB")), label


# --------------------------------------------------------------------------------------------
# Public entry points


def build_datasets(config: DataConfig, seed: int = 0) -> DataSplits:
    """Train / held-out val / test datasets for ``config``; ``seed`` picks the val split.

    Raises UserError (naming the ``data.*`` key and the path) when the data cannot be found or
    read.
    """
    if config.format == "imagefolder":
        return _build_imagefolder(config, seed)
    train_pool, candidates, test_pool, test_indices = _pools(config)
    _check_num_classes(config, train_pool.class_names)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _hold_out(train_pool.labels.numpy(), candidates, config, rng)
    common: dict[str, Any] = dict(image_size=config.image_size, mean=config.mean, std=config.std)
    digits = config.format == "digits"
    train = TensorImageDataset(
        train_pool.images,
        train_pool.labels,
        train_idx,
        augment=config.augment,
        flip=not digits,  # a mirrored digit is another glyph (or none)
        pad_mode="constant" if digits else "reflect",
        **common,
    )
    val = TensorImageDataset(train_pool.images, train_pool.labels, val_idx, **common)
    test = TensorImageDataset(test_pool.images, test_pool.labels, test_indices, **common)
    names = train_pool.class_names
    return DataSplits(train=train, val=val, test=test, num_classes=len(names), class_names=names)


def load_split(config: DataConfig, split: Split) -> ImageTensors:
    """One whole split of a small dataset as uint8 tensors (decoded once, then from the cache).

    Images are at ``min(native size, config.image_size)``. For ``digits``, ``train`` is the 80 %
    that is not the fixed test split. Not available for ``imagefolder`` (decoded lazily).
    """
    if config.format == "imagefolder":
        raise ValueError("load_split: imagefolder data is decoded lazily, not held in memory")
    if config.format == "digits":
        pool = _digits()
        train_idx, test_idx = _digits_split(pool)
        idx = torch.as_tensor(train_idx if split == "train" else test_idx)
        tensors = ImageTensors(pool.images[idx], pool.labels[idx], pool.class_names)
    elif config.format == "synthetic":
        tensors = _synthetic(config, split)
    elif config.format == "cifar10":
        tensors = _cifar10(_require_root(config), split)
    elif config.format == "tiny_imagenet":
        tensors = _tiny_imagenet(_require_root(config), split)
    else:  # pragma: no cover - the config's Literal forbids it
        raise ValueError(f"unknown data format {config.format!r}")
    return _shrink(tensors, config.image_size)


def cache_dir() -> Path:
    """Where decoded datasets are cached (``$AUTOML_HIAP_CACHE`` wins)."""
    explicit = os.environ.get("AUTOML_HIAP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "automl_hiap"


# --------------------------------------------------------------------------------------------
# Splitting


def _pools(config: DataConfig) -> tuple[ImageTensors, np.ndarray, ImageTensors, np.ndarray]:
    """(train pool, its candidate indices, test pool, its indices): digits share one pool."""
    if config.format == "digits":
        pool = _shrink(_digits(), config.image_size)
        train_idx, test_idx = _digits_split(pool)
        return pool, train_idx, pool, test_idx
    test = load_split(config, "test")  # first: smaller, so a broken layout fails fast
    train = load_split(config, "train")
    if test.class_names != train.class_names:
        raise UserError(f"data.root: train and test splits of {config.root} differ in classes")
    return train, np.arange(len(train)), test, np.arange(len(test))


def _hold_out(
    labels: np.ndarray, candidates: np.ndarray, config: DataConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``candidates`` into (train, val), then keep ``train_subset`` of train."""
    n = len(candidates)
    if n < 2:
        raise UserError(
            f"data.val_fraction: {n} training image(s): too few to hold out a val split"
        )
    n_val = min(n - 1, max(1, round(config.val_fraction * n)))
    val_pos, train_pos = _stratified_pick(labels[candidates], n_val, rng)
    train_idx, val_idx = candidates[train_pos], candidates[val_pos]
    if config.train_subset is not None and config.train_subset < len(train_idx):
        keep, _ = _stratified_pick(labels[train_idx], config.train_subset, rng)
        train_idx = train_idx[keep]
    return train_idx, val_idx


def _stratified_pick(
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


def _check_num_classes(config: DataConfig, names: tuple[str, ...]) -> None:
    if config.num_classes is not None and config.num_classes != len(names):
        raise UserError(
            f"data.num_classes: {config.num_classes} does not match the {len(names)} classes "
            f"of the {config.format} data" + (f" in {config.root}" if config.root else "")
        )


def _shrink(tensors: ImageTensors, size: int) -> ImageTensors:
    """Down-sample once in memory (antialiased bicubic); up-sampling happens per item."""
    images = tensors.images
    if images.shape[-1] <= size and images.shape[-2] <= size:
        return tensors
    out = torch.empty((images.shape[0], 3, size, size), dtype=torch.uint8)
    for start in range(0, images.shape[0], 2048):
        chunk = images[start : start + 2048].float()
        resized = F.interpolate(chunk, size=(size, size), mode="bicubic", antialias=True)
        out[start : start + 2048] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return ImageTensors(out, tensors.labels, tensors.class_names)


# --------------------------------------------------------------------------------------------
# ImageNet-style folders (lazy)


def _build_imagefolder(config: DataConfig, seed: int) -> DataSplits:
    from timm.data import create_transform

    root = _require_root(config)
    train_dir, test_dir = root / "train", root / "val"
    if not train_dir.is_dir() or not test_dir.is_dir():
        raise UserError(
            f"data.root: no ImageFolder data in {root} (expected train/<class>/ and "
            "val/<class>/ folders of images)"
        )
    class_names = tuple(sorted(d.name for d in os.scandir(train_dir) if d.is_dir()))
    if not class_names:
        raise UserError(f"data.root: {train_dir} has no class folders")
    _check_num_classes(config, class_names)
    index = {name: i for i, name in enumerate(class_names)}
    train_samples = _scan_class_folders(train_dir, index)
    test_samples = _scan_class_folders(test_dir, index)
    labels = np.array([label for _, label in train_samples], dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_idx, val_idx = _hold_out(labels, np.arange(len(labels)), config, rng)

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
        files = sorted(
            f.path
            for f in os.scandir(entry.path)
            if f.is_file() and f.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        samples.extend((path, index[entry.name]) for path in files)
    if not samples:
        raise UserError(f"data.root: no images in {split_dir}/<class>/")
    return samples


# --------------------------------------------------------------------------------------------
# CIFAR-10


def _cifar10(root: Path, split: Split) -> ImageTensors:
    batches = next(
        (d for d in (root / "cifar-10-batches-py", root) if (d / "data_batch_1").is_file()), None
    )
    if batches is not None:
        return _cifar10_pickles(batches, split)
    archive = root / f"cifar10_{split}_jpeg.tar.gz"
    if archive.is_file():
        return _cached(
            f"cifar10-{split}",
            [archive],
            lambda: _decode_labelled(
                _tar_images(archive, _cifar_member_label(split)),
                CIFAR10_CLASSES,
                _CIFAR_NATIVE,
                f"{archive} (expected members {split}/<class>/*.jpg)",
            ),
        )
    folder = root / split
    if folder.is_dir():
        files = _folder_images(folder, CIFAR10_CLASSES, f"data.root: {folder}")
        return _cached(
            f"cifar10-{split}",
            [path for path, _ in files],
            lambda: _decode_labelled(
                _file_images(files), CIFAR10_CLASSES, _CIFAR_NATIVE, str(folder)
            ),
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


def _cifar_member_label(split: Split) -> Callable[[str], str | None]:
    def label(name: str) -> str | None:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] == split and name.lower().endswith(IMAGE_EXTENSIONS):
            return parts[-2]
        return None

    return label


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles: allow the numpy array machinery and nothing else."""

    _ALLOWED = frozenset({"_reconstruct", "_frombuffer", "ndarray", "dtype", "scalar"})

    def find_class(self, module: str, name: str) -> Any:
        numpy_part = module.split(".")[0] == "numpy" and name in self._ALLOWED
        if numpy_part or (module, name) == ("_codecs", "encode"):  # protocol-2 bytes need it
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar10_pickles(folder: Path, split: Split) -> ImageTensors:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = folder / name
        if not path.is_file():
            raise UserError(f"data.root: CIFAR-10 batch {path} is missing")
        try:
            with open(path, "rb") as fh:
                batch = _NumpyOnlyUnpickler(fh, encoding="bytes").load()
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
    if not isinstance(batch, dict):
        raise TypeError(f"expected a dict, got {type(batch).__name__}")
    return batch[key.encode()] if key.encode() in batch else batch[key]


# --------------------------------------------------------------------------------------------
# Tiny-ImageNet


def _tiny_imagenet(root: Path, split: Split) -> ImageTensors:
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise UserError(
            f"data.root: no Tiny-ImageNet found in {root} (expected wnids.txt, "
            "train_100per_class.tar.gz or train/<wnid>/images/, val_images.tar.gz or "
            "val/images/, and val_annotations.txt)"
        )
    wnids = tuple(w for w in wnids_file.read_text().split() if w)
    if split == "train":
        archive = next(iter(sorted(root.glob("train*.tar.gz"))), None)
        if archive is not None:
            return _cached(
                "tiny_imagenet-train",
                [archive, wnids_file],
                lambda: _decode_labelled(
                    _tar_images(archive, _tiny_train_label),
                    wnids,
                    _TINY_NATIVE,
                    f"{archive} (expected members train/<wnid>/images/*.JPEG)",
                ),
            )
        if (root / "train").is_dir():
            files = _folder_images(root / "train", wnids, f"data.root: {root / 'train'}", "images")
            return _cached(
                "tiny_imagenet-train",
                [path for path, _ in files] + [wnids_file],
                lambda: _decode_labelled(
                    _file_images(files), wnids, _TINY_NATIVE, str(root / "train")
                ),
            )
        raise UserError(
            f"data.root: Tiny-ImageNet in {root} has no train split (expected "
            "train_100per_class.tar.gz or train/<wnid>/images/)"
        )
    annotations = next(
        (
            p
            for p in (root / "val_annotations.txt", root / "val" / "val_annotations.txt")
            if p.is_file()
        ),
        None,
    )
    if annotations is None:
        raise UserError(f"data.root: {root}/val_annotations.txt is missing (val labels)")
    val_archive = root / "val_images.tar.gz"
    val_folder = root / "val" / "images"
    val_files: list[Path] = []
    if not val_archive.is_file():
        if not val_folder.is_dir():
            raise UserError(
                f"data.root: Tiny-ImageNet in {root} has no val split (expected "
                "val_images.tar.gz or val/images/)"
            )
        val_files = sorted(
            p for p in val_folder.iterdir() if p.name.lower().endswith(IMAGE_EXTENSIONS)
        )
    sources = [*(val_files or [val_archive]), annotations, wnids_file]

    def decode() -> ImageTensors:
        by_file = _read_val_annotations(annotations, set(wnids))

        def label(name: str) -> str | None:
            parts = name.split("/")
            if len(parts) >= 2 and parts[-2] == "images":
                return by_file.get(parts[-1])
            return None

        if val_files:
            items = _file_images([(p, by_file.get(p.name)) for p in val_files])
        else:
            items = _tar_images(val_archive, label)
        where = f"{val_folder}" if val_files else f"{val_archive} (expected val/images/*.JPEG)"
        result = _decode_labelled(items, wnids, _TINY_NATIVE, where)
        if len(result) != len(by_file):
            raise UserError(
                f"data.root: {annotations} lists {len(by_file)} val images but "
                f"{len(result)} were found"
            )
        return result

    return _cached("tiny_imagenet-val", sources, decode)


def _tiny_train_label(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) >= 4 and parts[-4] == "train" and parts[-2] == "images":
        return parts[-3] if name.lower().endswith(IMAGE_EXTENSIONS) else None
    return None


def _read_val_annotations(path: Path, known: set[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in known:
            raise UserError(
                f"data.root: {path} line {number}: expected 'filename<TAB>wnid ...' with a wnid "
                f"from wnids.txt, got {line[:80]!r}"
            )
        labels[fields[0]] = fields[1]
    return labels


# --------------------------------------------------------------------------------------------
# Digits (scikit-learn) and synthetic data: built in memory


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


def _digits_split(pool: ImageTensors) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices: a stratified 20 % test split, the same in every run."""
    count = round(DIGITS_TEST_FRACTION * len(pool))
    rng = np.random.default_rng(FIXED_SPLIT_SEED)
    test_idx, train_idx = _stratified_pick(pool.labels.numpy(), count, rng)
    return train_idx, test_idx


def _synthetic(config: DataConfig, split: Split) -> ImageTensors:
    """Class = colour + stripe direction/frequency, with a random phase and pixel noise.

    Fixed seeds: the data are the same in every run; only the val split moves with ``seed``.
    Easy on purpose (the colour alone nearly separates the classes), so a tiny ViT learns it
    within a few epochs and tests can check that training helps.
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


# --------------------------------------------------------------------------------------------
# Decoding and the disk cache

_Item = tuple[str, str | None, bytes]  # (where, class name or None to skip, file bytes)


def _require_root(config: DataConfig) -> Path:
    if not config.root:
        raise UserError(f"data.root: required for format {config.format}")
    root = Path(config.root)
    if not root.exists():
        raise UserError(f"data.root: {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data.root: {root} is not a directory")
    return root


def _tar_images(archive: Path, label: Callable[[str], str | None]) -> Iterator[_Item]:
    """Stream (member, class, bytes) out of a tar(.gz) in one sequential pass."""
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = label(member.name)
                if name is None:
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                yield f"{archive}:{member.name}", name, handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise UserError(f"data.root: cannot read {archive}: {exc}") from None


def _folder_images(
    folder: Path, classes: Sequence[str], where: str, inner: str = ""
) -> list[tuple[Path, str]]:
    """(file, class) for ``folder/<class>/[inner/]*``, sorted; unknown class folders fail."""
    known = set(classes)
    files: list[tuple[Path, str]] = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        if entry.name not in known:
            raise UserError(f"{where}: unexpected class folder {entry.name!r}")
        directory = Path(entry.path) / inner if inner else Path(entry.path)
        if directory.is_dir():
            files.extend(
                (p, entry.name)
                for p in sorted(directory.iterdir())
                if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)
            )
    if not files:
        raise UserError(f"{where}: no images in {folder}/<class>/{inner + '/' if inner else ''}")
    return files


def _file_images(files: Sequence[tuple[Path, str | None]]) -> Iterator[_Item]:
    for path, name in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"data.root: cannot read {path}: {exc}") from None
        yield str(path), name, data


def _decode_labelled(
    items: Iterator[_Item], classes: Sequence[str], size: int, source: str
) -> ImageTensors:
    """Decode to RGB ``size``×``size`` uint8 (resizing odd ones), sorted by (class, name)."""
    index = {name: i for i, name in enumerate(classes)}
    decoded: list[tuple[int, str, np.ndarray]] = []
    for where, name, data in items:
        if name is None:
            continue
        if name not in index:
            raise UserError(f"data.root: {where}: class {name!r} is not one of {len(index)} known")
        decoded.append((index[name], where, _decode(data, where, size)))
    if not decoded:
        raise UserError(f"data.root: no labelled images found in {source}")
    decoded.sort(key=lambda item: (item[0], item[1]))
    images = np.stack([array for _, _, array in decoded])
    labels = torch.tensor([label for label, _, _ in decoded], dtype=torch.long)
    return ImageTensors(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, tuple(classes)
    )


def _decode(data: bytes, where: str, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"data.root: cannot decode {where}: {exc}") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)


def _fingerprint(kind: str, sources: Sequence[Path]) -> str:
    """Names, sizes and mtimes of the sources: a changed file means a new cache entry."""
    stats = []
    for path in sources:
        st = path.stat()
        stats.append((str(path.absolute()), st.st_size, st.st_mtime_ns))
    key = json.dumps({"version": CACHE_VERSION, "kind": kind, "sources": stats})
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def _cached(kind: str, sources: Sequence[Path], build: Callable[[], ImageTensors]) -> ImageTensors:
    """Load ``kind`` from the cache, or build it and store it atomically (temp file + rename)."""
    path = cache_dir() / f"{kind}-{_fingerprint(kind, sources)}.pt"
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            images, labels = blob["images"], blob["labels"]
            if images.dtype != torch.uint8 or images.shape[0] != labels.shape[0]:
                raise ValueError(f"unexpected contents {images.dtype} {tuple(images.shape)}")
            return ImageTensors(images, labels, tuple(blob["class_names"]))
        except Exception as exc:  # a truncated or foreign file: rebuild it
            log.warning("data: ignoring unreadable cache %s (%s)", path, exc)
    log.info("data: decoding %s once (cached in %s)", kind, path.parent)
    tensors = build()
    blob = {
        "images": tensors.images,
        "labels": tensors.labels,
        "class_names": list(tensors.class_names),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{kind}-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(blob, fh)
            os.chmod(tmp, 0o644)  # mkstemp makes it private; it holds public data
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning("data: cannot write cache %s (%s); decoding again next time", path, exc)
    return tensors
