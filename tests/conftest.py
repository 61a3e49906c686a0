"""Shared fixtures: tiny ViTs and the optional real data beside the checkout."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

from safetensors.torch import save_file  # noqa: E402

import automl_hiap as ah  # noqa: E402
from automl_hiap.models import ModelSpec  # noqa: E402

SHARED_DATA = Path(
    os.environ.get("AUTOML_HIAP_DATA", Path(__file__).parents[2] / "shared" / "data")
)

TINY_KWARGS: dict[str, Any] = dict(
    img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, mlp_ratio=2.0, num_classes=10
)


def tiny_spec(name: str = "vit_tiny_patch16_224", **overrides: Any) -> ModelSpec:
    return ModelSpec(name, {**TINY_KWARGS, **overrides})


def synthetic_data(count: int = 64, seed: int = 1234) -> torch.utils.data.TensorDataset:
    """Random 16x16 images with random labels of 10 classes (for strategies that train)."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 16, 16, generator=generator)
    return torch.utils.data.TensorDataset(
        images, torch.randint(0, 10, (count,), generator=generator)
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip, with the reason, where CUDA is absent."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run by bench/gpu_check.py on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _mlflow_store_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """`search` logs to MLflow by default (./mlflow.db): point every test's runs at one
    throw-away store instead."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    yield
    if previous is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = previous


@pytest.fixture
def tiny() -> tuple[ModelSpec, torch.nn.Module, ah.SearchSpace]:
    torch.manual_seed(0)
    spec = tiny_spec()
    model = spec.create().eval()
    return spec, model, ah.SearchSpace.from_model(model)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set AUTOML_HIAP_DATA)")
    return SHARED_DATA


LR_RANGE = "tune.params.finetune_lr={low: 1.0e-4, high: 1.0e-2, log: true}"


@pytest.fixture(scope="module")
def fast(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides for quick trials: given dense weights (no dense phase), 64 images, one
    fine-tuning epoch, no speed measurement."""
    path = tmp_path_factory.mktemp("dense") / "tiny.safetensors"
    model = tiny_spec().create()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return [
        f"model.checkpoint={path}",
        "train.dense_epochs=0",
        "data.train_subset=64",
        "data.augment=false",
        "strategy.params.finetune_epochs=1",
        "tune.measure=false",
        LR_RANGE,
    ]


UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture
def mute_server() -> Iterator[str]:
    """A server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.1)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:  # the accept timed out: look at `stop` again
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        listener.close()
