"""MLflow tracking and model registry, kept apart from the core (the search never imports it).

- :mod:`~automl_hiap.tracking.store`: the tracking URI, opening the store, its errors;
- :mod:`~automl_hiap.tracking.tracker`: a search's run, a study's parent run, its trials;
- :mod:`~automl_hiap.tracking.run`: what one run logs, epoch by epoch and at the end;
- :mod:`~automl_hiap.tracking.registry`: registered versions, their tags and aliases;
- :mod:`~automl_hiap.tracking.pyfunc`: the logged model and MLflow's loader for it;
- :mod:`~automl_hiap.tracking.pull`: a model's files from a local path or an MLflow URI.

The names below are imported from their module on first use, not with the package: reaching
:mod:`~automl_hiap.tracking.pull` (``automl_hiap.load`` of a missing path, ``export`` of a
local folder) must not cost an MLflow import. ``pull``, ``fetched`` and ``is_uri`` come from
that module itself (the package attribute ``pull`` is the module).

This package is the ``loader_module`` that logged models name in their ``MLmodel`` file, those
logged before the split included, so ``_load_pyfunc`` must stay reachable here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automl_hiap.tracking.pyfunc import MODEL_NAME, PrunedViTPyfunc
    from automl_hiap.tracking.pyfunc import _load_pyfunc as _load_pyfunc  # the loader module
    from automl_hiap.tracking.registry import budget_alias
    from automl_hiap.tracking.run import TAG, Run, resolved_params
    from automl_hiap.tracking.store import (
        DEFAULT_URI,
        TrackingError,
        resolve_uri,
        store_errors,
        use_store,
    )
    from automl_hiap.tracking.tracker import RUN_FILE, Tracker, open_tracker

_HOMES = {
    "MODEL_NAME": "pyfunc",
    "PrunedViTPyfunc": "pyfunc",
    "_load_pyfunc": "pyfunc",
    "budget_alias": "registry",
    "TAG": "run",
    "Run": "run",
    "resolved_params": "run",
    "DEFAULT_URI": "store",
    "TrackingError": "store",
    "resolve_uri": "store",
    "store_errors": "store",
    "use_store": "store",
    "RUN_FILE": "tracker",
    "Tracker": "tracker",
    "open_tracker": "tracker",
}

__all__ = [
    "DEFAULT_URI",
    "MODEL_NAME",
    "RUN_FILE",
    "TAG",
    "PrunedViTPyfunc",
    "Run",
    "Tracker",
    "TrackingError",
    "budget_alias",
    "open_tracker",
    "resolve_uri",
    "resolved_params",
    "store_errors",
    "use_store",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOMES])
