"""Can the data pipeline keep a GPU fed? Decode + augment throughput of the trainer's loader.

What: images per second that ``Trainer``'s own training loader delivers (the path a search
takes: ``train.num_workers``, persistent workers, per-item seeds, prefetch), on this machine's
CPUs, for

* **ImageNet-style folders** (``data.format: imagefolder``): JPEG files decoded per item and
  augmented with timm's training transform (random resized crop, flip, normalize) at 224 px,
  as for DeiT on ImageNet: built here from CIFAR-10 and Tiny-ImageNet JPEGs of
  ``../shared/data`` unpacked into a temporary ``train/<class>/`` folder;
* the same folders at their native size (32 px / 64 px: decode-bound);
* **in-memory uint8 tensors** (``data.format: cifar10``: decoded once and cached; crop + flip
  per item).

For each, the loader is timed over two epochs: the first includes starting the worker
processes, the second (persistent workers) does not. ``per_worker`` is the steady rate per
worker process; a GPU step that consumes B images in t seconds needs about
``B / t / per_worker`` workers (one per core at most). Per-item seeding (``automl_hiap.loading``)
is timed against plain items too.

The machine may be shared (load average in the report): absolute numbers are a floor.

    python bench/data_loading.py                # ~3 min on 2 cores, writes bench/results/
    python bench/data_loading.py --quick        # seconds, writes nothing
    python bench/data_loading.py --render       # the md again from the committed json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import automl_hiap  # noqa: F401  (first: makes timm importable on this machine)
from automl_hiap.config import DataConfig, TrainConfig
from automl_hiap.data import build_datasets
from automl_hiap.loading import SeededItems
from automl_hiap.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("AUTOML_HIAP_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "bench" / "results"
ARCHIVES = {
    "cifar10": (DATA / "cifar10-jpeg" / "cifar10_train_jpeg.tar.gz", "train/", 32),
    "tiny_imagenet": (
        DATA / "tiny-imagenet-200" / "train_100per_class.tar.gz",
        "tiny-imagenet-200/train/",
        64,
    ),
}


def unpack_folder(name: str, per_class: int, classes: int, dest: Path) -> Path:
    """``dest/train/<class>/*`` (and a small ``val/``) with the first images of each class."""
    archive, prefix, _ = ARCHIVES[name]
    counts: dict[str, int] = {}
    with tarfile.open(archive, "r|gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(prefix):
                continue
            label = member.name[len(prefix) :].split("/")[0]
            if label not in counts and len(counts) == classes:
                continue
            seen = counts.setdefault(label, 0)
            if seen >= per_class + 2:
                continue
            split = "val" if seen < 2 else "train"
            folder = dest / split / label
            folder.mkdir(parents=True, exist_ok=True)
            handle = tar.extractfile(member)
            assert handle is not None
            (folder / Path(member.name).name).write_bytes(handle.read())
            counts[label] = seen + 1
    return dest


def time_loader(dataset: Any, batch: int, workers: int, batches: int) -> dict[str, float]:
    """Images/s of the trainer's training loader in epoch 0 (with worker start) and 1."""
    config = TrainConfig(batch_size=batch, num_workers=workers, seed=0)
    trainer = Trainer(config, dataset, device="cpu")
    result = {}
    for epoch in (0, 1):
        loader = iter(trainer._loader(epoch))
        started = time.perf_counter()
        first = None
        for i in range(batches):
            next(loader)
            if i == 0:
                first = time.perf_counter() - started
        total = time.perf_counter() - started
        result[f"epoch{epoch}_img_s"] = batch * batches / total
        result[f"epoch{epoch}_first_batch_s"] = float(first or 0.0)
    del trainer  # stops the persistent workers
    steady = result["epoch1_img_s"]
    result["per_worker_img_s"] = steady / max(workers, 1)
    return result


def seeding_overhead(dataset: Any, items: int) -> dict[str, float]:
    """Seconds per item with and without the per-item RNG seeding of SeededItems."""
    seeded = SeededItems(dataset)
    plain_t, seeded_t = [], []
    for _ in range(3):
        started = time.perf_counter()
        for i in range(items):
            dataset[i % len(dataset)]
        plain_t.append((time.perf_counter() - started) / items)
        started = time.perf_counter()
        for i in range(items):
            seeded[(i * 7919, i % len(dataset))]
        seeded_t.append((time.perf_counter() - started) / items)
    plain, with_seed = statistics.median(plain_t), statistics.median(seeded_t)
    return {"plain_us": plain * 1e6, "seeded_us": with_seed * 1e6, "overhead": with_seed / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, writes nothing")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--render", action="store_true", help="rewrite the md from the json")
    args = parser.parse_args()
    if args.render:
        report = json.loads((args.out / "data_loading.json").read_text())
        (args.out / "data_loading.md").write_text(markdown(report))
        return
    if not DATA.is_dir():
        raise SystemExit(f"data_loading: no data folder {DATA} (set AUTOML_HIAP_DATA)")
    torch.set_num_threads(1)  # the loader's work is per item; workers are the parallelism
    batch, batches = (16, 3) if args.quick else (64, 6)
    per_class = 8 if args.quick else 80
    worker_counts = (0, 1) if args.quick else (0, 1, 2)
    rows: list[dict[str, Any]] = []
    seeding: dict[str, Any] = {}
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        for name, (_, _, native) in ARCHIVES.items():
            root = unpack_folder(name, per_class, 10, Path(scratch) / name)
            for size in (224, native):
                data = DataConfig(format="imagefolder", root=str(root), image_size=size)
                train = build_datasets(data, seed=0).train
                for workers in worker_counts:
                    timing = time_loader(train, batch, workers, batches)
                    rows.append(
                        {"data": f"{name} JPEG folder", "px": size, "workers": workers} | timing
                    )
                    print(rows[-1], flush=True)
                if size == 224:
                    seeding[f"{name} 224 px"] = seeding_overhead(train, 16 if args.quick else 64)
        cache = Path(scratch) / "cache"
        os.environ["AUTOML_HIAP_CACHE"] = str(cache)
        subset = 512 if args.quick else 4096
        memory = DataConfig(
            format="cifar10", root=str(DATA / "cifar10-jpeg"), image_size=32, train_subset=subset
        )
        train = build_datasets(memory, seed=0).train
        for workers in worker_counts:
            timing = time_loader(train, batch, workers, batches * 4)
            rows.append({"data": "cifar10 in memory", "px": 32, "workers": workers} | timing)
            print(rows[-1], flush=True)
    report = {
        "command": "python bench/data_loading.py" + (" --quick" if args.quick else ""),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "batch": batch,
        "batches_per_epoch": batches,
        "images_per_class": per_class,
        "seconds": time.perf_counter() - started,
        "rows": rows,
        "per_item_seeding": seeding,
    }
    if args.quick:
        print(json.dumps(report, indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "data_loading.json").write_text(json.dumps(report, indent=1))
    (args.out / "data_loading.md").write_text(markdown(report))
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Data loading: decode + augment throughput of the trainer's loader (CPU)",
        "",
        f"Generated by `bench/data_loading.py`; raw numbers in `data_loading.json`. Command: "
        f"`{report['command']}`; torch {report['torch']}, {report['cpus']} logical CPUs, "
        f"{report['seconds']:.0f} s.",
        "Load average before / after: "
        + " / ".join(", ".join(f"{v:.1f}" for v in a) for a in report["load_average_before_after"])
        + f" on {report['cpus']} CPUs: the machine was shared (other jobs ran throughout), so "
        "each process got a fraction of a core and these rates are floors; worker counts above "
        "the idle cores cannot help here.",
        "",
        f"Batch {report['batch']}, {report['batches_per_epoch']} batches timed per epoch; epoch 0 "
        "includes starting the workers, epoch 1 reuses them (persistent workers). `per worker` = "
        "epoch-1 rate / workers: a GPU consuming R images/s needs about R / per-worker workers.",
        "",
        "| data | px | workers | epoch 0 img/s | 1st batch s | epoch 1 img/s | per worker img/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['data']} | {r['px']} | {r['workers']} | {r['epoch0_img_s']:.0f} | "
            f"{r['epoch0_first_batch_s']:.2f} | {r['epoch1_img_s']:.0f} | "
            f"{r['per_worker_img_s']:.0f} |"
        )
    lines += [
        "",
        "Reading it: 224 px rows are the ImageNet recipe (timm's random resized crop to 224, flip,"
        " normalize); the JPEGs here are 32 px / 64 px, far smaller than ImageNet's (~110 KB,"
        " ~400x350 px), so a real ImageNet folder decodes slower per image. The in-memory format"
        " (CIFAR-10 decoded once, cropped and flipped per item) costs ~0.1 ms per image. To feed"
        " a GPU that trains DeiT-Small at a few thousand images/s from an ImageNet folder, plan on"
        " one worker per core and as many cores as R / (per-worker rate); `num_workers` beyond"
        " the cores only adds contention (2 workers on this 2-core, loaded machine).",
    ]
    lines += ["", "Per-item seeding (`loading.SeededItems`, used with workers):", ""]
    lines += ["| data | plain µs / item | seeded µs / item | ratio |", "|---|---:|---:|---:|"]
    for name, s in report["per_item_seeding"].items():
        lines.append(
            f"| {name} | {s['plain_us']:.0f} | {s['seeded_us']:.0f} | {s['overhead']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
