"""Datasets for search and fine-tuning: train / held-out val / test, as torch Datasets.

Three splits, because search decisions must never see the test data: ``val`` is a seeded,
stratified slice of the *training* data (``data.val_fraction``) and ``test`` is the dataset's own
test (or official val) split.

Small datasets (CIFAR-10, Tiny-ImageNet) are decoded from JPEG once into uint8 tensors and
cached on disk (``$AUTOML_HIAP_CACHE``, else ``$XDG_CACHE_HOME/automl_hiap`` or
``~/.cache/automl_hiap``), so decoding is paid once per machine, not once per run or per epoch.
The cache holds images at their native size, so every ``image_size`` shares it: smaller sizes
are resized once in memory, larger ones per item. The authors' CIFAR-10 python batches are raw
pixels already and are read directly, uncached; ``digits`` and ``synthetic`` are built in
memory, uncached. ImageNet-style ``imagefolder`` data is decoded lazily, per item, with timm's
transforms.

Modules: ``formats`` (the table ``data.format`` → reader, and the entry points), ``datasets``,
``splits``, ``cache``, ``images`` (archive and folder reading, decoding) and one module per
format family.
"""

from automl_hiap.data.cache import cache_dir
from automl_hiap.data.cifar10 import CIFAR10_CLASSES
from automl_hiap.data.datasets import DataSplits, ImageFileDataset, ImageTensors, TensorImageDataset
from automl_hiap.data.formats import build_datasets, load_split

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
