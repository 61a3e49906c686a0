"""Fetch an exported model from wherever it was put: a local path, or an MLflow URI
(``models:/NAME@alias``, ``models:/NAME/VERSION``, ``runs:/<run id>/model``, or any artifact
URI MLflow can download). Rebuilding it is ``model_files``' job.

MLflow is imported only once a source turns out not to be local, so ``automl_hiap.load`` and
``export`` of a local model stay free of it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from automl_hiap.atomic import check_folder, copy_file
from automl_hiap.errors import UserError
from automl_hiap.model_files import (
    ARCH_FILE,
    WEIGHTS_FILE,
    find_export,
    load_folder,
    load_safetensors,
    save,
)
from automl_hiap.tracking.reach import TrackingError, check_server, is_uri


def pull(source: str | Path, out: str | Path, tracking_uri: str | None = None) -> Path:
    """Write ``arch.json`` + ``model.safetensors`` of ``source`` to ``out`` (checked by
    rebuilding the model first); return ``out``."""
    out = Path(out)
    check_folder(out, "--out")  # before a download
    with fetched(source, tracking_uri) as path:
        if path.is_file():
            return save(load_safetensors(path), out)
        folder = find_export(path)
        load_folder(folder)  # refuse to hand out files that do not rebuild a model
        for name in (ARCH_FILE, WEIGHTS_FILE):
            copy_file(folder / name, out / name)
    return out


@contextmanager
def fetched(source: str | Path, tracking_uri: str | None = None) -> Iterator[Path]:
    """A local path for ``source``: itself if it exists, else a temporary download."""
    path = Path(source)
    if path.exists():
        yield path
        return
    if not is_uri(source):
        raise UserError(
            f"{source}: no such file or folder, and not an MLflow URI "
            "(models:/NAME@alias, models:/NAME/VERSION, runs:/RUN_ID/model)"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    from automl_hiap.tracking.store import first_line, use_store

    uri = tracking_uri or mlflow.get_tracking_uri()
    try:
        check_server(uri)  # MLflow's own client retries a silent server for minutes
    except TrackingError as exc:
        raise UserError(f"{source}: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="automl_hiap-pull-") as scratch:
        try:
            # MLflow 3.17 resolves models:/ names with the process-wide URI whatever
            # download_artifacts is given, so point it at the store for this call only
            with use_store(uri):
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=str(source), dst_path=scratch
                )
        except (MlflowException, OSError) as exc:
            raise UserError(f"{source}: cannot download it: {first_line(exc)}") from None
        yield Path(local)
