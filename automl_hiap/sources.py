"""``automl_hiap.load``: a pruned model from wherever it was put.

A local folder or ``.safetensors`` file is rebuilt by ``model_files`` alone; only an MLflow URI
(``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/ID/model``) imports the tracking
code, so loading a local model never imports MLflow.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from automl_hiap import model_files
from automl_hiap.placement import Placement


def load(
    source: str | Path, tracking_uri: str | None = None, device: str | torch.device | None = None
) -> nn.Module:
    """The pruned model at ``source``, in eval mode; ``tracking_uri`` is the MLflow store that
    resolves a URI (default: ``MLFLOW_TRACKING_URI``, else MLflow's default). Weights are read
    on the host and the model is then moved to ``device`` (default: left on the CPU)."""
    if Path(source).exists():
        model = model_files.load(source)
    else:
        from automl_hiap.tracking.pull import fetched  # MLflow, only for a remote source

        with fetched(source, tracking_uri) as local:
            model = model_files.load(local)
    return model if device is None else Placement(torch.device(device)).module(model)
