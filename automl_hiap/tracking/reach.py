"""Whether a tracking store can take a run, decided without importing MLflow or torch.

Commands check the store this way before their heavy imports, so a server that does not answer
or a SQLite file that cannot be written stops them in seconds; :mod:`~automl_hiap.tracking.store`
checks the same again when it opens the store. An HTTP server is probed with a short timeout:
MLflow's own client retries a silent one for minutes.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from automl_hiap.atomic import unwritable
from automl_hiap.errors import UserError

if TYPE_CHECKING:
    from automl_hiap.config import TrackingConfig

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default store
PROBE_TIMEOUT_S = 5.0
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "15", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1"}
URI_PREFIXES = ("models:/", "runs:/")
NOT_RUN = (
    "nothing was run (fix the URI, start the server, or set tracking.offline_fallback: true to "
    "log to a local store instead)"
)


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


def is_uri(source: str | Path) -> bool:
    """Whether ``source`` names something for MLflow to download rather than a local path."""
    text = str(source)
    return text.startswith(URI_PREFIXES) or "://" in text


def check_server(uri: str) -> None:
    """Stop with one line if ``uri`` is a tracking server that does not answer. A server that
    answers the probe but then stalls is bounded too: MLflow's client gets a request timeout
    and few retries (unless the user set them), not its defaults of minutes per call."""
    if uri.startswith(("http://", "https://")):
        for name, value in HTTP_LIMITS.items():
            os.environ.setdefault(name, value)
    reason = probe(uri)
    if reason is not None:
        raise TrackingError(f"tracking server {uri} is unreachable ({reason})")


def check_store(uri: str) -> None:
    """Stop with one line if the store at ``uri`` cannot take a run: a server that does not
    answer, or a SQLite file (or its folder, where the journal goes) that cannot be written."""
    check_server(uri)
    database = sqlite_file(uri)
    if database is None:
        return
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrackingError(f"tracking.uri {uri}: {first_line(exc)}") from None
    for path in (database.parent, database):
        reason = unwritable(path) if path.exists() else None
        if reason is not None:
            raise TrackingError(f"tracking.uri {uri}: cannot write {path} ({reason})")


def preflight(config: TrackingConfig, uri: str | None = None, enabled: bool = True) -> None:
    """The store a command will track to, checked as ``open_tracker`` will check it (same
    arguments), before the command loads MLflow and torch."""
    if not (enabled and config.enabled) or int(os.environ.get("RANK", "0")) != 0:
        return
    if config.offline_fallback:
        return  # an unreachable store is then a warning, decided when the tracker opens
    try:
        check_store(resolve_uri(config.uri, uri))
    except TrackingError as exc:
        raise TrackingError(f"{exc}; {NOT_RUN}") from None
