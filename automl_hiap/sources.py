"""``automl_hiap.load``: a pruned model from wherever it was put.

A local folder or ``.safetensors`` file is rebuilt by ``model_files`` alone; only an MLflow URI
(``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/ID/model``) imports the tracking
code, so loading a local model never imports MLflow.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from automl_hiap import model_files


def load(source: str | Path, tracking_uri: str | None = None) -> nn.Module:
    """The pruned model at ``source``, in eval mode; ``tracking_uri`` is the MLflow store that
    resolves a URI (default: ``MLFLOW_TRACKING_URI``, else MLflow's default)."""
    if Path(source).exists():
        return model_files.load(source)
    from automl_hiap.tracking.pull import fetched  # MLflow, only for a remote source

    with fetched(source, tracking_uri) as local:
        return model_files.load(local)
