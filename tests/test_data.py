"""Datasets: every format, the three splits, augmentation, the decode cache and clear errors."""

from __future__ import annotations

import io
import pickle
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from PIL import Image

from automl_hiap import data
from automl_hiap.config import DataConfig
from automl_hiap.data import CIFAR10_CLASSES, TensorImageDataset, build_datasets, load_split
from automl_hiap.data import images as data_images
from automl_hiap.data.formats import FORMATS
from automl_hiap.data.splits import stratified_pick
from automl_hiap.errors import UserError

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test decodes into its own cache, so no test depends on another's leftovers."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOML_HIAP_CACHE", str(cache))
    return cache


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """After this, any JPEG decode fails: a build that still works came from the cache."""

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data_images, "decode_image", fail)


def indices(dataset: object) -> set[int]:
    assert isinstance(dataset, TensorImageDataset)
    return set(dataset.indices.tolist())


def labels_of(dataset: object) -> torch.Tensor:
    assert isinstance(dataset, TensorImageDataset)
    return dataset.labels


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def tar_members(
    archive: Path, wanted: Callable[[str], bool], stop_after: int | None = None
) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the members ``wanted(name)`` accepts, streaming, stopping early."""
    found = 0
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if member.isfile() and wanted(member.name):
                handle = tar.extractfile(member)
                assert handle is not None
                yield member.name, handle.read()
                found += 1
                if stop_after is not None and found >= stop_after:
                    return


# ---------------------------------------------------------------------------------------------
# Splitting


def test_stratified_pick_is_exact_proportional_and_seeded() -> None:
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    picked, rest = stratified_pick(labels, 20, np.random.default_rng(3))
    assert len(picked) == 20 and len(rest) == 80
    assert set(picked) | set(rest) == set(range(100)) and not set(picked) & set(rest)
    assert np.bincount(labels[picked], minlength=4).tolist() == [10, 6, 3, 1]
    again, _ = stratified_pick(labels, 20, np.random.default_rng(3))
    other, _ = stratified_pick(labels, 20, np.random.default_rng(4))
    assert again.tolist() == picked.tolist() and other.tolist() != picked.tolist()


# ---------------------------------------------------------------------------------------------
# The format table


def test_every_configurable_format_has_exactly_one_table_entry() -> None:
    assert set(FORMATS) == set(get_args(DataConfig.model_fields["format"].annotation))


def test_load_split_refuses_lazily_decoded_formats(tmp_path: Path) -> None:
    config = DataConfig(format="imagefolder", root=str(tmp_path))
    with pytest.raises(ValueError, match=r"^load_split: imagefolder data is decoded lazily"):
        load_split(config, "train")


# ---------------------------------------------------------------------------------------------
# synthetic


def test_synthetic_is_deterministic_learnable_and_sized_by_config() -> None:
    config = DataConfig(format="synthetic", image_size=16, num_classes=4, val_fraction=0.25)
    splits = build_datasets(config, seed=0)
    assert splits.num_classes == 4 and splits.class_names[0] == "class_0"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (384, 128, 128)
    image, label = splits.val[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and 0 <= label < 4
    assert torch.equal(splits.test[5][0], build_datasets(config, seed=0).test[5][0])
    # the data are fixed; the seed only moves the val split
    other = build_datasets(config, seed=1)
    assert torch.equal(other.test[5][0], splits.test[5][0])
    assert indices(other.val) != indices(splits.val)
    # learnable: class colour means are far apart compared with the noise
    train, test = load_split(config, "train"), load_split(config, "test")

    def colour(tensors: data.ImageTensors) -> torch.Tensor:
        return tensors.images.float().mean(dim=(2, 3))

    centroids = torch.stack([colour(train)[train.labels == k].mean(0) for k in range(4)])
    predicted = torch.cdist(colour(test), centroids).argmin(1)
    assert (predicted == test.labels).float().mean() > 0.9

    subset = build_datasets(config.model_copy(update={"train_subset": 1000, "num_classes": None}))
    assert len(subset.train) == 1000 and subset.num_classes == 10
    assert torch.bincount(labels_of(subset.train)).tolist() == [100] * 10


# ---------------------------------------------------------------------------------------------
# digits (real, from scikit-learn)


def test_digits_splits_are_stratified_disjoint_and_only_train_is_augmented() -> None:
    pytest.importorskip("sklearn")
    config = DataConfig(format="digits", image_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    splits = build_datasets(config, seed=0)
    assert splits.num_classes == 10 and splits.class_names == tuple("0123456789")
    train, val, test = indices(splits.train), indices(splits.val), indices(splits.test)
    assert not train & val and not train & test and not val & test
    assert len(train | val | test) == 1797
    assert len(test) == round(0.2 * 1797) and len(val) == round(0.1 * (1797 - len(test)))
    everything = torch.cat([labels_of(s) for s in (splits.train, splits.val, splits.test)])
    share = torch.bincount(everything).float() / len(everything)
    for split in (splits.test, splits.val):  # every class in proportion (±1)
        counts = torch.bincount(labels_of(split), minlength=10).float()
        assert torch.all((counts - share * len(split)).abs() <= 1.0)

    # the test split is fixed; the val split follows the seed
    reseeded = build_datasets(config, seed=1)
    assert indices(reseeded.test) == test and indices(reseeded.val) != val

    image, _ = splits.test[0]
    assert image.shape == (3, 16, 16) and image.min() >= -1.0 and image.max() <= 1.0
    assert torch.equal(image[0], image[1])  # grey digits, three identical channels
    assert splits.test[3][0].equal(splits.test[3][0]) and splits.val[3][0].equal(splits.val[3][0])
    draws = [splits.train[3][0] for _ in range(20)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # random crops on train only
    assert isinstance(splits.train, TensorImageDataset) and not splits.train.flip

    plain = build_datasets(config.model_copy(update={"augment": False}))
    assert torch.equal(plain.train[3][0], plain.train[3][0])

    subset = build_datasets(config.model_copy(update={"train_subset": 100}))
    assert len(subset.train) == 100 and indices(subset.train) <= train
    assert torch.bincount(labels_of(subset.train), minlength=10).min() >= 9


# ---------------------------------------------------------------------------------------------
# CIFAR-10: python pickles (fake, in the authors' format)


def write_cifar_pickles(folder: Path, per_batch: int = 4, test: int = 6) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = test if name == "test_batch" else per_batch
        batch = {
            b"batch_label": name.encode(),
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


def test_cifar10_pickle_batches(tmp_path: Path) -> None:
    write_cifar_pickles(tmp_path / "cifar-10-batches-py")
    config = DataConfig(
        format="cifar10", root=str(tmp_path), image_size=32, mean=CIFAR_MEAN, std=CIFAR_STD
    )
    train_raw, test_raw = load_split(config, "train"), load_split(config, "test")
    assert train_raw.images.shape == (20, 3, 32, 32) and test_raw.images.shape == (6, 3, 32, 32)
    batch = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(test_raw.images[2].flatten(), torch.from_numpy(batch[b"data"][2]))
    assert test_raw.labels.tolist() == batch[b"labels"]

    splits = build_datasets(config)
    assert splits.class_names == CIFAR10_CLASSES and len(splits.test) == 6
    assert len(splits.train) + len(splits.val) == 20 and len(splits.val) == 2
    image, label = splits.test[2]
    mean = torch.tensor(CIFAR_MEAN).view(3, 1, 1)
    std = torch.tensor(CIFAR_STD).view(3, 1, 1)
    expected = (test_raw.images[2].float() / 255 - mean) / std
    assert torch.allclose(image, expected, atol=1e-5) and label == batch[b"labels"][2]

    # the batches may also sit directly in root
    flat = tmp_path / "flat"
    write_cifar_pickles(flat)
    assert len(load_split(config.model_copy(update={"root": str(flat)}), "test")) == 6


def test_cifar10_pickle_refuses_anything_but_numpy(tmp_path: Path) -> None:
    write_cifar_pickles(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": print, b"labels": []}))
    config = DataConfig(format="cifar10", root=str(tmp_path), image_size=32)
    with pytest.raises(UserError, match=r"data\.root: .*test_batch is not a CIFAR-10 python"):
        load_split(config, "test")


# ---------------------------------------------------------------------------------------------
# CIFAR-10: JPEG archives and folders (real images from ../shared/data)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder shared by this module's tests, for fixtures built once from the real data."""
    return tmp_path_factory.mktemp("repacked")


@pytest.fixture
def small_cifar(shared_data: Path, scratch: Path) -> Path:
    """Real CIFAR-10 test JPEGs (8 per class) repacked as both archives, real member names."""
    root = scratch / "cifar10"
    if root.is_dir():
        return root
    real = shared_data / "cifar10-jpeg" / "cifar10_test_jpeg.tar.gz"
    per_class: dict[str, int] = {}

    def wanted(name: str) -> bool:
        cls = name.split("/")[1]
        per_class[cls] = per_class.get(cls, 0) + 1
        return per_class[cls] <= 8

    members = list(tar_members(real, wanted))
    assert len(members) == 80
    root.mkdir()
    train = [m for i, m in enumerate(members) if i % 8 < 6]  # 6 per class
    test = [m for i, m in enumerate(members) if i % 8 >= 6]  # 2 per class
    for split, chosen in (("train", train), ("test", test)):
        with tarfile.open(root / f"cifar10_{split}_jpeg.tar.gz", "w:gz") as tar:
            for name, payload in sorted(chosen):
                add_member(tar, name.replace("test/", f"{split}/", 1), payload)
    return root


def test_cifar10_jpeg_archives_decode_once_then_come_from_the_cache(
    small_cifar: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = DataConfig(format="cifar10", root=str(small_cifar), image_size=32, val_fraction=0.2)
    splits = build_datasets(config, seed=0)
    assert splits.class_names == CIFAR10_CLASSES
    assert (len(splits.train), len(splits.val), len(splits.test)) == (48, 12, 20)
    assert torch.bincount(labels_of(splits.test)).tolist() == [2] * 10
    assert sorted(set(torch.bincount(labels_of(splits.val)).tolist())) == [1, 2]
    assert not indices(splits.train) & indices(splits.val)
    assert splits.train[0][0].shape == (3, 32, 32)
    cached = sorted(p.name for p in private_cache.iterdir())
    assert [n.rsplit("-", 1)[0] for n in cached] == ["cifar10-test", "cifar10-train"]

    forbid_decoding(monkeypatch)
    again = build_datasets(config, seed=0)
    assert torch.equal(again.test[7][0], splits.test[7][0])
    assert sorted(p.name for p in private_cache.iterdir()) == cached
    # another size reuses the native-size cache: smaller is resized once, larger per item
    assert build_datasets(config.model_copy(update={"image_size": 16})).test[0][0].shape == (
        3,
        16,
        16,
    )
    assert build_datasets(config.model_copy(update={"image_size": 48})).test[0][0].shape == (
        3,
        48,
        48,
    )


def test_cifar10_cache_is_rebuilt_when_unreadable_or_the_source_changes(
    small_cifar: Path, private_cache: Path, tmp_path: Path
) -> None:
    config = DataConfig(format="cifar10", root=str(small_cifar), image_size=32)
    first = load_split(config, "test")
    (entry,) = private_cache.iterdir()
    entry.write_bytes(b"truncated")
    assert torch.equal(load_split(config, "test").images, first.images)

    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("cifar10_train_jpeg.tar.gz", "cifar10_test_jpeg.tar.gz"):
        (copy / name).write_bytes((small_cifar / name).read_bytes())
    load_split(config.model_copy(update={"root": str(copy)}), "test")
    assert len(list(private_cache.iterdir())) == 2  # a different source, a different entry


def test_cifar10_unpacked_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("test", 2)):
        for cls in ("cat", "airplane"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                size = 40 if i == 0 else 32  # an odd one is resized to 32
                array = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{i:04d}.png")
    config = DataConfig(format="cifar10", root=str(tmp_path), image_size=32, val_fraction=0.2)
    test = load_split(config, "test")
    assert test.images.shape == (4, 3, 32, 32) and test.labels.tolist() == [0, 0, 3, 3]
    original = np.array(Image.open(tmp_path / "test" / "cat" / "0001.png"))
    assert torch.equal(test.images[3], torch.from_numpy(original).permute(2, 0, 1))
    splits = build_datasets(config)
    assert (len(splits.train), len(splits.val)) == (8, 2)
    assert torch.bincount(labels_of(splits.val), minlength=4).tolist() == [1, 0, 0, 1]


def test_cifar10_real_test_archive_counts_and_cache_reuse(
    shared_data: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = DataConfig(format="cifar10", root=str(shared_data / "cifar10-jpeg"), image_size=32)
    start = time.perf_counter()
    test = load_split(config, "test")
    cold = time.perf_counter() - start
    assert test.images.shape == (10_000, 3, 32, 32) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    # real photos, not noise: the channel means are near CIFAR-10's published statistics
    means = test.images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor(CIFAR_MEAN), atol=0.02)
    forbid_decoding(monkeypatch)
    start = time.perf_counter()
    warm = load_split(config, "test")
    assert time.perf_counter() - start < cold / 3
    assert torch.equal(warm.images, test.images) and len(list(private_cache.iterdir())) == 1


@pytest.mark.slow
def test_cifar10_real_full_build_cold_then_warm(
    shared_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = DataConfig(
        format="cifar10",
        root=str(shared_data / "cifar10-jpeg"),
        image_size=32,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
    )
    start = time.perf_counter()
    splits = build_datasets(config, seed=0)
    cold = time.perf_counter() - start
    assert (len(splits.train), len(splits.val), len(splits.test)) == (45_000, 5_000, 10_000)
    assert torch.bincount(labels_of(splits.val)).tolist() == [500] * 10
    assert torch.bincount(labels_of(splits.train)).tolist() == [4500] * 10
    forbid_decoding(monkeypatch)
    start = time.perf_counter()
    build_datasets(config, seed=0)
    warm = time.perf_counter() - start
    print(f"CIFAR-10 train+test build: cold {cold:.1f} s, warm {warm:.2f} s")
    assert warm < cold / 5


# ---------------------------------------------------------------------------------------------
# Tiny-ImageNet (real images from ../shared/data)


@pytest.fixture
def small_tiny(shared_data: Path, scratch: Path) -> Path:
    """Three real classes (6 train + all 50 val images each) in the shared files' layout."""
    root = scratch / "tiny-imagenet-200"
    if root.is_dir():
        return root
    real = shared_data / "tiny-imagenet-200"
    train = list(tar_members(real / "train_100per_class.tar.gz", lambda n: True, stop_after=300))
    wnids = sorted({name.split("/")[2] for name, _ in train})[:3]
    root.mkdir()
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))  # not sorted
    with tarfile.open(root / "train_100per_class.tar.gz", "w:gz") as tar:
        for wnid in wnids:
            own = [(n, b) for n, b in train if n.split("/")[2] == wnid][:6]
            for name, payload in own:
                add_member(tar, name, payload)
        grey = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)  # a grayscale JPEG
        add_member(
            tar, f"tiny-imagenet-200/train/{wnids[0]}/images/{wnids[0]}_grey.JPEG", jpeg_bytes(grey)
        )
    lines = [
        line
        for line in (real / "val_annotations.txt").read_text().splitlines()
        if line.split("\t")[1] in wnids
    ]
    (root / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    keep = {line.split("\t")[0] for line in lines}
    val = tar_members(real / "val_images.tar.gz", lambda n: n.rsplit("/", 1)[-1] in keep)
    with tarfile.open(root / "val_images.tar.gz", "w:gz") as tar:
        for name, payload in val:
            add_member(tar, name, payload)
    return root


def test_tiny_imagenet_archives_and_unpacked_folders(small_tiny: Path, tmp_path: Path) -> None:
    config = DataConfig(format="tiny_imagenet", root=str(small_tiny), image_size=64)
    splits = build_datasets(config)
    wnids = tuple((small_tiny / "wnids.txt").read_text().split())
    assert splits.class_names == wnids and splits.num_classes == 3  # wnids.txt order
    assert len(splits.train) + len(splits.val) == 19 and len(splits.test) == 150
    assert torch.bincount(labels_of(splits.test)).tolist() == [50, 50, 50]
    train = load_split(config, "train")
    assert train.images.shape == (19, 3, 64, 64)
    grey = train.images[train.labels == wnids.index(sorted(wnids)[0])][-1]  # sorts last
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert splits.test[0][0].shape == (3, 64, 64)

    # the same data unpacked: train/<wnid>/images/, val/images/, val/val_annotations.txt
    unpacked = tmp_path / "unpacked"
    for archive in ("train_100per_class.tar.gz", "val_images.tar.gz"):
        with tarfile.open(small_tiny / archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(unpacked, filter="data")
            else:  # pragma: no cover - Python < 3.10.12
                tar.extractall(unpacked)
    inner = unpacked / "tiny-imagenet-200"
    (inner / "wnids.txt").write_text((small_tiny / "wnids.txt").read_text())
    (inner / "val" / "val_annotations.txt").write_text(
        (small_tiny / "val_annotations.txt").read_text()
    )
    other = config.model_copy(update={"root": str(inner)})
    assert torch.equal(load_split(other, "test").images, load_split(config, "test").images)
    assert torch.equal(load_split(other, "train").images, train.images)


def test_tiny_imagenet_real_val_counts_and_grayscale(shared_data: Path) -> None:
    root = shared_data / "tiny-imagenet-200"
    config = DataConfig(format="tiny_imagenet", root=str(root), image_size=64)
    val = load_split(config, "test")
    assert val.images.shape == (10_000, 3, 64, 64)
    assert len(val.class_names) == 200 and val.class_names[0] == "n02124075"
    assert torch.bincount(val.labels).tolist() == [50] * 200
    same = (val.images[:, 0] == val.images[:, 1]).flatten(1).all(1)
    same &= (val.images[:, 1] == val.images[:, 2]).flatten(1).all(1)
    assert int(same.sum()) >= 168  # the README's grayscale images, now three equal channels


# ---------------------------------------------------------------------------------------------
# ImageNet-style folders (lazy, timm transforms)


def test_imagefolder_tree(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 10), ("val", 2)):
        for cls in ("zebra", "ant", "mole"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                array = rng.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8)
                Image.fromarray(array).save(folder / f"{i}.JPEG" if i % 2 else folder / f"{i}.png")
            (folder / "notes.txt").write_text("not an image")
    config = DataConfig(format="imagefolder", root=str(tmp_path), image_size=32, val_fraction=0.2)
    splits = build_datasets(config, seed=0)
    assert splits.class_names == ("ant", "mole", "zebra") and splits.num_classes == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 6)
    image, label = splits.test[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and label == 0
    assert torch.equal(splits.val[1][0], splits.val[1][0])  # eval transform: deterministic
    draws = [splits.train[1][0] for _ in range(5)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])  # timm's training aug
    assert isinstance(splits.train, data.ImageFileDataset)
    assert isinstance(splits.val, data.ImageFileDataset)
    assert not set(splits.train.indices) & set(splits.val.indices)
    plain = build_datasets(config.model_copy(update={"augment": False}))
    assert torch.equal(plain.train[1][0], plain.train[1][0])


# ---------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("fmt", ["cifar10", "tiny_imagenet", "imagefolder"])
def test_missing_or_empty_root_is_a_clear_user_error(fmt: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=rf"^data\.root: required for format {fmt}$"):
        build_datasets(DataConfig(format=fmt))  # type: ignore[arg-type]
    missing = tmp_path / "nope" / "x"
    with pytest.raises(UserError, match=rf"^data\.root: {missing} does not exist$"):
        build_datasets(DataConfig(format=fmt, root=str(missing)))  # type: ignore[arg-type]
    expected = {
        "cifar10": r"no CIFAR-10 found in .* \(expected cifar-10-batches-py/.*"
        r"cifar10_train_jpeg\.tar\.gz",
        "tiny_imagenet": r"no Tiny-ImageNet found in .* \(expected wnids\.txt",
        "imagefolder": r"no ImageFolder data in .* \(expected train/<class>/",
    }[fmt]
    with pytest.raises(UserError, match=rf"^data\.root: {expected}"):
        build_datasets(DataConfig(format=fmt, root=str(tmp_path)))  # type: ignore[arg-type]
    file_root = tmp_path / "file"
    file_root.write_text("")
    with pytest.raises(UserError, match=r"is not a directory"):
        build_datasets(DataConfig(format=fmt, root=str(file_root)))  # type: ignore[arg-type]


def test_other_bad_inputs_name_the_key_and_path(tmp_path: Path) -> None:
    (tmp_path / "cifar10_train_jpeg.tar.gz").write_bytes(b"not gzip")
    config = DataConfig(format="cifar10", root=str(tmp_path), image_size=32)
    with pytest.raises(UserError, match=r"data\.root: CIFAR-10 in .* lacks the test split"):
        build_datasets(config)
    (tmp_path / "cifar10_test_jpeg.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match=r"data\.root: cannot read .*cifar10_test_jpeg\.tar\.gz"):
        build_datasets(config)
    with pytest.raises(UserError, match=r"data\.num_classes: 5 does not match the 10 classes"):
        build_datasets(DataConfig(format="digits", num_classes=5))

    wrong_layout = tmp_path / "wrong_layout"
    wrong_layout.mkdir()
    for split in ("train", "test"):
        with tarfile.open(wrong_layout / f"cifar10_{split}_jpeg.tar.gz", "w:gz") as tar:
            add_member(tar, "images/0001.jpg", jpeg_bytes(np.zeros((32, 32, 3), np.uint8)))
    with pytest.raises(
        UserError,
        match=r"data\.root: no labelled images found in .*cifar10_test_jpeg\.tar\.gz "
        r"\(expected members test/<class>/\*\.jpg\)",
    ):
        build_datasets(config.model_copy(update={"root": str(wrong_layout)}))

    tiny = tmp_path / "tiny"
    (tiny / "val" / "images").mkdir(parents=True)
    (tiny / "wnids.txt").write_text("n01\n")
    tiny_config = DataConfig(format="tiny_imagenet", root=str(tiny))
    with pytest.raises(UserError, match=r"data\.root: .*val_annotations\.txt is missing"):
        load_split(tiny_config, "test")


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert data.cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("AUTOML_HIAP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "automl_hiap"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.cache_dir() == Path.home() / ".cache" / "automl_hiap"
