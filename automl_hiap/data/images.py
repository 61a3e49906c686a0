"""Image files out of archives and folders, decoded to labelled uint8 tensors.

Archives are streamed in one sequential pass (no unpacking); every reader yields
``(where, class name, bytes)`` items, so errors can name the file or member at fault.
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from automl_hiap.config import DataConfig
from automl_hiap.data.datasets import ImageTensors
from automl_hiap.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

Item = tuple[str, str | None, bytes]  # (where, class name or None to skip, file bytes)


def require_root(config: DataConfig) -> Path:
    """``data.root`` as an existing directory, else a UserError naming the key."""
    if not config.root:
        raise UserError(f"data.root: required for format {config.format}")
    root = Path(config.root)
    if not root.exists():
        raise UserError(f"data.root: {root} does not exist")
    if not root.is_dir():
        raise UserError(f"data.root: {root} is not a directory")
    return root


def is_image(name: str) -> bool:
    """Whether a file or member name has one of the image extensions (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def tar_images(archive: Path, label: Callable[[str], str | None]) -> Iterator[Item]:
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


def folder_images(
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
                if p.is_file() and is_image(p.name)
            )
    if not files:
        raise UserError(f"{where}: no images in {folder}/<class>/{inner + '/' if inner else ''}")
    return files


def file_images(files: Sequence[tuple[Path, str | None]]) -> Iterator[Item]:
    """Read (file, class) pairs as items, lazily, one file at a time."""
    for path, name in files:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"data.root: cannot read {path}: {exc}") from None
        yield str(path), name, data


def decode_labelled(
    items: Iterator[Item], classes: Sequence[str], size: int, source: str
) -> ImageTensors:
    """Decode to RGB ``size``×``size`` uint8 (resizing odd ones), sorted by (class, name).

    Sorting makes the result independent of archive or directory order, so splits and cache
    contents are reproducible.
    """
    index = {name: i for i, name in enumerate(classes)}
    decoded: list[tuple[int, str, np.ndarray]] = []
    for where, name, data in items:
        if name is None:
            continue
        if name not in index:
            raise UserError(f"data.root: {where}: class {name!r} is not one of {len(index)} known")
        decoded.append((index[name], where, decode_image(data, where, size)))
    if not decoded:
        raise UserError(f"data.root: no labelled images found in {source}")
    decoded.sort(key=lambda item: (item[0], item[1]))
    images = np.stack([array for _, _, array in decoded])
    labels = torch.tensor([label for label, _, _ in decoded], dtype=torch.long)
    return ImageTensors(
        torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, tuple(classes)
    )


def decode_image(data: bytes, where: str, size: int) -> np.ndarray:
    """One encoded image as an RGB H×W×3 uint8 array of ``size``×``size``."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UserError(f"data.root: cannot decode {where}: {exc}") from None
    if rgb.size != (size, size):
        rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.uint8)
