"""The torch Datasets every format ends in, and the in-memory form of a decoded split."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

Split = Literal["train", "test"]
PadMode = Literal["reflect", "constant"]


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
        pad_mode: PadMode = "reflect",
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
