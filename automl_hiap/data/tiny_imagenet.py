"""Tiny-ImageNet: train from an archive or ``train/<wnid>/images/``, test = the official val.

Classes are in ``wnids.txt`` order; val labels come from ``val_annotations.txt``. Both splits are
decoded once into the cache.
"""

from __future__ import annotations

from pathlib import Path

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

NATIVE_SIZE = 64


def read(config: DataConfig, split: Split) -> ImageTensors:
    """One split at native size; ``test`` is the official val split."""
    root = require_root(config)
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise UserError(
            f"data.root: no Tiny-ImageNet found in {root} (expected wnids.txt, "
            "train_100per_class.tar.gz or train/<wnid>/images/, val_images.tar.gz or "
            "val/images/, and val_annotations.txt)"
        )
    wnids = tuple(w for w in wnids_file.read_text().split() if w)
    if split == "train":
        return _read_train(root, wnids, wnids_file)
    return _read_val(root, wnids, wnids_file)


def _read_train(root: Path, wnids: tuple[str, ...], wnids_file: Path) -> ImageTensors:
    archive = next(iter(sorted(root.glob("train*.tar.gz"))), None)
    if archive is not None:
        return cached(
            "tiny_imagenet-train",
            [archive, wnids_file],
            lambda: decode_labelled(
                tar_images(archive, _train_label),
                wnids,
                NATIVE_SIZE,
                f"{archive} (expected members train/<wnid>/images/*.JPEG)",
            ),
        )
    if (root / "train").is_dir():
        files = folder_images(root / "train", wnids, f"data.root: {root / 'train'}", "images")
        return cached(
            "tiny_imagenet-train",
            [path for path, _ in files] + [wnids_file],
            lambda: decode_labelled(file_images(files), wnids, NATIVE_SIZE, str(root / "train")),
        )
    raise UserError(
        f"data.root: Tiny-ImageNet in {root} has no train split (expected "
        "train_100per_class.tar.gz or train/<wnid>/images/)"
    )


def _read_val(root: Path, wnids: tuple[str, ...], wnids_file: Path) -> ImageTensors:
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
        val_files = sorted(p for p in val_folder.iterdir() if is_image(p.name))
    sources = [*(val_files or [val_archive]), annotations, wnids_file]

    def decode() -> ImageTensors:
        by_file = _read_val_annotations(annotations, set(wnids))

        def label(name: str) -> str | None:
            parts = name.split("/")
            if len(parts) >= 2 and parts[-2] == "images":
                return by_file.get(parts[-1])
            return None

        if val_files:
            items = file_images([(p, by_file.get(p.name)) for p in val_files])
        else:
            items = tar_images(val_archive, label)
        where = f"{val_folder}" if val_files else f"{val_archive} (expected val/images/*.JPEG)"
        result = decode_labelled(items, wnids, NATIVE_SIZE, where)
        if len(result) != len(by_file):
            raise UserError(
                f"data.root: {annotations} lists {len(by_file)} val images but "
                f"{len(result)} were found"
            )
        return result

    return cached("tiny_imagenet-val", sources, decode)


def _train_label(name: str) -> str | None:
    """Archive member ``…/train/<wnid>/images/<file>`` → wnid; anything else is skipped."""
    parts = name.split("/")
    if len(parts) >= 4 and parts[-4] == "train" and parts[-2] == "images":
        return parts[-3] if is_image(name) else None
    return None


def _read_val_annotations(path: Path, known: set[str]) -> dict[str, str]:
    """File name → wnid, from ``filename<TAB>wnid ...`` lines; unknown wnids fail."""
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
