"""The on-disk cache of decoded datasets, so JPEG decoding is paid once per machine.

Entries are keyed by the source files' names, sizes and mtimes (a changed file means a new
entry) and hold images at their native size, so every ``image_size`` shares one entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from automl_hiap.atomic import WriteError, atomic_path
from automl_hiap.data.datasets import ImageTensors

log = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored contents change, so old entries are not read


def cache_dir() -> Path:
    """Where decoded datasets are cached (``$AUTOML_HIAP_CACHE`` wins)."""
    explicit = os.environ.get("AUTOML_HIAP_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "automl_hiap"


def fingerprint(kind: str, sources: Sequence[Path]) -> str:
    """Names, sizes and mtimes of the sources: a changed file means a new cache entry."""
    stats = []
    for path in sources:
        st = path.stat()
        stats.append((str(path.absolute()), st.st_size, st.st_mtime_ns))
    key = json.dumps({"version": CACHE_VERSION, "kind": kind, "sources": stats})
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def cached(kind: str, sources: Sequence[Path], build: Callable[[], ImageTensors]) -> ImageTensors:
    """Load ``kind`` from the cache, or build it and store it atomically (temp file + rename)."""
    path = cache_dir() / f"{kind}-{fingerprint(kind, sources)}.pt"
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
        with atomic_path(path) as temporary:
            torch.save(blob, temporary)
    except WriteError as exc:
        log.warning("data: cannot write cache %s (%s); decoding again next time", path, exc)
    return tensors
