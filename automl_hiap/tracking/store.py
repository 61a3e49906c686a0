"""Where runs go: resolving the tracking URI, opening the store, and its errors.

The store is opened when a tracker is built, before any compute, so a wrong URI or a server
that is down stops a command at once rather than after the search. An HTTP server is probed
first with a short timeout, as MLflow's own client keeps retrying one that does not answer.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from automl_hiap.errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default store
PROBE_TIMEOUT_S = 5.0


class TrackingError(UserError):
    """The tracking store cannot be reached or refused a request."""


def resolve_uri(configured: str | None = None, flag: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the YAML's ``tracking.uri``,
    else MLflow's default local SQLite file."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


def first_line(exc: BaseException) -> str:
    """An exception as one line: store errors carry multi-line server responses."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def sqlite_file(uri: str) -> Path | None:
    """The database file of a local SQLite store (None for other stores)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if path and path != ":memory:" else None


def probe(uri: str) -> str | None:
    """Why a tracking server cannot be reached (None: it answered, whatever the answer)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
            return None
    except urllib.error.HTTPError:
        return None  # it answered
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return first_line(reason) if isinstance(reason, BaseException) else str(reason)


def open_experiment(uri: str, experiment: str) -> tuple[MlflowClient, str]:
    """A client of the store at ``uri`` and the id of ``experiment`` there (created if missing).

    An experiment created in a local SQLite store keeps its artifacts beside the database file
    (``<db folder>/mlruns``) rather than in ``./mlruns`` of whatever folder the command runs in,
    so one store is one folder.
    """
    reason = probe(uri)
    if reason is not None:
        raise TrackingError(f"tracking server {uri} is unreachable ({reason})")
    database = sqlite_file(uri)
    location = None
    if database is not None:
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"tracking.uri {uri}: {first_line(exc)}") from None
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
