"""Where runs go: opening the store, and its errors as one line.

The store is opened when a tracker is built, before any compute, so a wrong URI or a server
that is down stops a command at once rather than after the search; the checks that need no
MLflow (resolving the URI, probing a server, a writable SQLite file) live in
:mod:`~automl_hiap.tracking.reach` and are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from automl_hiap.tracking.reach import (  # noqa: F401 (DEFAULT_URI, probe, resolve_uri: re-exported)
    DEFAULT_URI,
    TrackingError,
    check_store,
    first_line,
    probe,
    resolve_uri,
    sqlite_file,
)


def open_experiment(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client of the store at ``uri`` and the id of ``experiment`` there (created if missing).

    An experiment created in a local SQLite store keeps its artifacts beside the database file
    (``<db folder>/mlruns``) rather than in ``./mlruns`` of whatever folder the command runs in,
    so one store is one folder.
    """
    check_store(uri)  # MLflow would retry a silent server, or a read-only file, for minutes
    database = sqlite_file(uri)
    location = None
    if database is not None:
        location = (database.parent.resolve() / "mlruns").as_uri()
    try:
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return client, str(found.experiment_id)
        return client, str(client.create_experiment(experiment, artifact_location=location))
    except Exception as exc:  # any store error: a bad URI, a refusing server, a locked file
        raise TrackingError(f"tracking store {uri}: {first_line(exc)}") from None


@contextmanager
def use_store(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at ``uri`` for calls that read only that
    (model logging, registration, resolving ``models:/`` names), then restore it, and the
    ``MLFLOW_TRACKING_URI`` variable that ``mlflow.set_tracking_uri`` also rewrites."""
    from mlflow.tracking._tracking_service import utils

    variable = os.environ.get("MLFLOW_TRACKING_URI")
    previous: Any = getattr(utils, "_tracking_uri", None)  # None: unset
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = variable


@contextmanager
def store_errors(uri: str, action: str) -> Iterator[None]:
    """Store failures as one line (a search stopped here resumes when run again)."""
    try:
        yield
    except (MlflowException, OSError) as exc:
        raise TrackingError(f"tracking store {uri}: {action} failed: {first_line(exc)}") from None
