"""The logged model: an export folder as an MLflow pyfunc model, and how MLflow loads it back.

The model's data is the export folder (``arch.json`` + ``model.safetensors``) and its loader
module is :data:`LOADER_MODULE`; loading it imports the installed automl_hiap and rebuilds the
model from those two files. Nothing is pickled; MLflow's "models from code" would instead store
a Python file with the model and execute it on load.

The loader module recorded in each model's ``MLmodel`` file is the package
``automl_hiap.tracking``, not this module: models logged before the package was split name it,
and it stays the one stable name, whatever module the loader lives in.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient
    from torch import nn

MODEL_NAME = "model"  # artifact name of the logged model
LOADER_MODULE = "automl_hiap.tracking"  # must keep re-exporting _load_pyfunc


def log_model(
    client: MlflowClient, uri: str, experiment_id: str, run_id: str, folder: str | Path
) -> str:
    """Log an export folder as an MLflow pyfunc model of run ``run_id`` in experiment
    ``experiment_id`` of the store at ``uri``; return the model's URI."""
    import mlflow
    import timm
    from mlflow.models import Model, ModelSignature
    from mlflow.types import Schema, TensorSpec

    from automl_hiap import __version__
    from automl_hiap.export_formats import input_shape
    from automl_hiap.model_files import load
    from automl_hiap.tracking.store import store_errors, use_store

    model: Any = load(folder)
    shape = input_shape(model)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(model.num_classes)))]),
    )
    with store_errors(uri, "logging the model"), use_store(uri):
        logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
        info = Model.log(  # reads the process-wide URI; model_id pins the experiment
            artifact_path=None,
            name=MODEL_NAME,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            loader_module=LOADER_MODULE,
            data_path=str(folder),
            signature=signature,
            input_example=np.zeros((1, *shape), dtype=np.float32),
            pip_requirements=[f"automl_hiap=={__version__}", f"timm=={timm.__version__}"],
        )
    return str(info.model_uri)


class PrunedViTPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: float32 images (N, C, H, W) -> logits."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        device = next(self.model.parameters()).device  # wherever the model was put
        with torch.inference_mode():
            return self.model(images.to(device)).float().cpu().numpy()


def _load_pyfunc(data_path: str) -> PrunedViTPyfunc:
    """MLflow's loader-module entry point: rebuild from arch.json + safetensors."""
    from automl_hiap.model_files import load

    return PrunedViTPyfunc(load(data_path))
