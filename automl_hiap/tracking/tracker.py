"""The runs of one experiment: a search's run, a study's parent run and its trials' child runs.

``search`` opens one run (:meth:`Tracker.search_run`); the Optuna outer loop opens a parent run
per study (:meth:`Tracker.study_run`) and a nested child run per trial
(:meth:`Tracker.trial_run`), through the hooks of :mod:`automl_hiap.tune.tracking`, so a
study's trials are found under it in the MLflow UI.

A search run again in the same output folder (after a crash or kill) continues its MLflow run,
so one search is one run wherever it was killed. ``OUT/mlflow_run.json`` names the run; it is
written with a fresh key before the run is created and the run carries that key as a tag, so a
kill between the two still finds it. A run that logged everything (tag ``automl_hiap.logged``)
is handed back as done and nothing is logged again; one with other resolved params (tag
``automl_hiap.params_digest``) is another search, which gets a new run. Only rank 0 of a
``torchrun`` job tracks, or each rank would log the same search.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from automl_hiap.atomic import write_json
from automl_hiap.budget import Budget
from automl_hiap.config import SearchConfig, TrackingConfig
from automl_hiap.errors import UserError
from automl_hiap.tracking.reach import NOT_RUN
from automl_hiap.tracking.registry import register_version
from automl_hiap.tracking.run import LOGGED, TAG, Run, resolved_params
from automl_hiap.tracking.store import (
    DEFAULT_URI,
    TrackingError,
    open_experiment,
    resolve_uri,
    store_errors,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from automl_hiap.outcome import SearchReport

RUN_FILE = "mlflow_run.json"  # in a search's output folder: the run a resumed search continues
SEARCH_KEY = f"{TAG}search_key"  # the key in RUN_FILE, set on the run when it is created
PARAMS_DIGEST = f"{TAG}params_digest"  # what tells another search in the same folder apart
CONFIGURED = f"{TAG}configured"  # params and config.yaml are logged


def open_tracker(
    config: TrackingConfig,
    uri: str | None = None,
    register: str | None = None,
    enabled: bool = True,
    fallback_dir: str | Path | None = None,
) -> Tracker | None:
    """The tracker a command uses (None when tracking is off or on a rank other than 0).

    ``uri`` and ``register`` are the command-line overrides; ``fallback_dir`` is where a local
    store goes when the server is unreachable and ``config.offline_fallback`` allows it.
    """
    if not (enabled and config.enabled):
        if register is not None:
            raise UserError(
                "--register: registering needs tracking (drop --no-tracking; "
                "tracking.enabled: true)"
            )
        return None
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # a command prints its own lines
    fallback = None
    if config.offline_fallback:
        fallback = Path(fallback_dir) if fallback_dir is not None else Path.cwd()
    return Tracker(
        resolve_uri(config.uri, uri),
        config.experiment,
        register=register or config.registered_model,
        fallback_dir=fallback,
    )


def _reconnect(uri: str, experiment: str, register: str | None, intended: str) -> Tracker:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    tracker = Tracker(uri, experiment, register)
    tracker.intended_uri = intended
    return tracker


class Tracker:
    """One MLflow experiment in one tracking store, checked when built.

    A server that does not answer is an error, or, with ``fallback_dir``, a warning and a local
    SQLite store there; its runs are tagged with the intended URI, so they can be told apart
    from runs logged where they were meant to go.
    """

    def __init__(
        self,
        uri: str = DEFAULT_URI,
        experiment: str = "automl_hiap",
        register: str | None = None,
        fallback_dir: str | Path | None = None,
    ) -> None:
        self.intended_uri = uri
        self.experiment = experiment
        self.register_name = register
        self._study_id: str | None = None
        self.client: MlflowClient
        try:
            self.client, self.experiment_id = open_experiment(uri, experiment)
            self.uri = uri
        except TrackingError as exc:
            if fallback_dir is None:
                raise TrackingError(f"{exc}; {NOT_RUN}") from None
            folder = Path(fallback_dir).resolve()
            local = f"sqlite:///{folder / 'mlflow.db'}"
            print(
                f"automl_hiap: warning: {exc}; logging to the local store {local} instead",
                file=sys.stderr,
            )
            self.client, self.experiment_id = open_experiment(local, experiment)
            self.uri = local

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its settings (spawned tune workers get a tracker) and reconnected on
        load to the store actually in use (no fallback there: this one already chose)."""
        return (_reconnect, (self.uri, self.experiment, self.register_name, self.intended_uri))

    def _create(
        self,
        name: str,
        kind: str,
        parent: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> Run:
        tags = {MLFLOW_RUN_NAME: name, f"{TAG}kind": kind, **(extra or {})}
        if parent is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent
        if self.uri != self.intended_uri:
            tags[f"{TAG}intended_tracking_uri"] = self.intended_uri
        with store_errors(self.uri, "starting a run"):
            run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        return Run(self, run.info.run_id)

    @contextmanager
    def _running(self, run: Run) -> Iterator[Run]:
        """End the run FINISHED, FAILED, or KILLED (interrupt, pruned trial); re-raise."""
        from optuna.exceptions import TrialPruned

        try:
            yield run
        except BaseException as exc:
            killed = isinstance(exc, (KeyboardInterrupt, TrialPruned))
            try:
                if isinstance(exc, TrialPruned):
                    self.client.set_tag(run.id, f"{TAG}pruned", "true")
                self.client.set_terminated(run.id, "KILLED" if killed else "FAILED")
            except Exception:
                pass  # the original error matters more than a failed status update
            raise
        with store_errors(self.uri, "ending the run"):
            self.client.set_terminated(run.id, "FINISHED")

    # ---------------------------------------------------------------- a search
    @contextmanager
    def search_run(
        self,
        config: SearchConfig,
        out: str | Path,
        strategy_name: str | None = None,
        budget: Budget | None = None,
    ) -> Iterator[Run]:
        """One search's run, one per output folder: continues the run of an earlier attempt in
        ``out``; if that one logged everything, it comes back with ``done`` set and logs
        nothing."""
        params = resolved_params(config, strategy_name, budget)
        digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
        marker = Path(out) / RUN_FILE
        run = self._earlier_search(marker, digest)
        if run is not None and run.done:
            run.config = config
            yield run
            return
        if run is None:
            key = secrets.token_hex(8)
            write_json(marker, {"tracking_uri": self.uri, "key": key})
            tags = {SEARCH_KEY: key, PARAMS_DIGEST: digest}
            run = self._create(Path(out).resolve().name, "search", extra=tags)
        else:
            with store_errors(self.uri, "resuming the run"):
                self.client.update_run(run.id, status="RUNNING")
        write_json(marker, {"tracking_uri": self.uri, "run_id": run.id})
        with self._running(run):
            if run.configured:
                run.config = config
            else:
                run.log_config(config, params)
                run.set_tags({CONFIGURED: "true"})
            yield run

    def _earlier_search(self, marker: Path, digest: str) -> Run | None:
        """The run named by ``marker`` if it is this search's (None: start a new one)."""
        try:
            saved = json.loads(marker.read_text())
            if saved["tracking_uri"] != self.uri:
                return None
            run_id = saved.get("run_id") or self._run_with_key(str(saved["key"]))
            if run_id is None:
                return None
            found = self.client.get_run(run_id)
        except (OSError, ValueError, KeyError, TypeError, MlflowException):
            return None
        info, tags = found.info, found.data.tags
        if info.lifecycle_stage != "active" or info.experiment_id != self.experiment_id:
            return None
        if tags.get(PARAMS_DIGEST, digest) != digest:
            return None  # another search in the same folder
        done = tags.get(LOGGED) == "true"
        if info.status == "FINISHED" and not done:
            return None  # finished without a search's results (an older version's run)
        if done and info.status != "FINISHED":  # killed between the last log and the end
            with store_errors(self.uri, "ending the run"):
                self.client.set_terminated(info.run_id, "FINISHED")
        run = Run(self, info.run_id)
        run.done, run.configured = done, CONFIGURED in tags
        return run

    def _run_with_key(self, key: str) -> str | None:
        """The run created for ``key`` (a kill can come before its id reaches the marker)."""
        if not key.isalnum():
            return None
        with store_errors(self.uri, "looking up the search run"):
            found = self.client.search_runs(
                [self.experiment_id], f"tags.`{SEARCH_KEY}` = '{key}'", max_results=1
            )
        return found[0].info.run_id if found else None

    # ---------------------------------------------------------------- a study
    @contextmanager
    def study_run(
        self, name: str, params: Mapping[str, Any] | None = None, key: str | None = None
    ) -> Iterator[Run]:
        """The parent run of the Optuna study ``name``; :meth:`trial_run` nests under it.

        Found by name when it exists, so a resumed study (or another worker process of the same
        study) adds its trials to the same parent; ``params`` are logged when it is created.
        ``key`` (tag ``automl_hiap.study_key``) tells apart studies that share a name, e.g. two
        tunes with the default study name in two output folders.
        """
        run = self._find_study(name, key)
        if run is None:
            run = self._create(name, "study")
            if key is not None:
                run.set_tags({f"{TAG}study_key": key})
            run.log_params(params or {})
        else:
            with store_errors(self.uri, "resuming the study run"):
                self.client.update_run(run.id, status="RUNNING")
        previous, self._study_id = self._study_id, run.id
        try:
            with self._running(run):
                yield run
        finally:
            self._study_id = previous

    def _find_study(self, name: str, key: str | None = None) -> Run | None:
        if "'" in name or "'" in (key or ""):
            return None  # not expressible in a filter string: start a new parent run
        query = f"tags.`{TAG}kind` = 'study' and tags.`{MLFLOW_RUN_NAME}` = '{name}'"
        if key is not None:
            query += f" and tags.`{TAG}study_key` = '{key}'"
        with store_errors(self.uri, "looking up the study run"):
            found = self.client.search_runs(
                [self.experiment_id], query, order_by=["attributes.start_time DESC"], max_results=1
            )
        return Run(self, found[0].info.run_id) if found else None

    @contextmanager
    def trial_run(
        self,
        number: int,
        params: Mapping[str, Any],
        config: SearchConfig | None = None,
        parent_id: str | None = None,
    ) -> Iterator[Run]:
        """A child run of the open study (or of run ``parent_id``): the trial's sampled
        ``params`` and, if given, its resolved ``config``. Ends KILLED with tag
        ``automl_hiap.pruned`` on ``optuna.TrialPruned``."""
        parent = parent_id or self._study_id
        if parent is None:
            raise RuntimeError("trial_run() needs an open study_run() or a parent_id")
        run = self._create(f"trial-{number}", "trial", parent=parent)
        with store_errors(self.uri, "logging the trial"):
            self.client.set_tag(run.id, f"{TAG}trial", str(number))
        run.log_params(params)
        if config is not None:
            run.log_config(config)
        with self._running(run):
            yield run

    # ---------------------------------------------------------------- the registry
    def register(
        self,
        model_uri: str,
        report: SearchReport,
        config: SearchConfig,
        name: str,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Register a logged model (``models:/<model id>``) as a version of ``name`` in this
        store (see :mod:`automl_hiap.tracking.registry`) and return the version."""
        return register_version(
            self.client, self.uri, model_uri, report, config, name, run_id=run_id
        )
