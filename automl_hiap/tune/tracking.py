"""An Optuna study in MLflow: one parent run per study, a nested child run per trial.

:class:`TrackingHooks` plugs a :class:`~automl_hiap.tracking.Tracker` into the outer loop's
:class:`~automl_hiap.tune.TuneHooks` (``tune`` and ``search`` with a ``tune:`` section use it
unless tracking is off):

* The study's parent run holds the study settings as params; every command and worker process
  of the study adds its trials to it. At the end of each command it gets ``pareto.png``,
  ``trials.csv`` and ``tune.json``, the trial counts and the best trial's metrics (step = trials
  in the study) and tag ``automl_hiap.best_trial``.
* Each trial is a child run ``trial-<n>``: its sampled params and resolved config, per-epoch
  metrics and candidate subnets (the run is an epoch listener of the trial's search), and once
  the search is done its final metrics, val top-1, distance to the target, feasibility,
  artifacts and logged model. A pruned trial ends KILLED with tag ``automl_hiap.pruned``, a
  failed one FAILED with tag ``automl_hiap.fail_reason``; a retry has ``automl_hiap.retry_of``.
* With a registered-model name (``--register`` / ``tracking.register``) only the trial the tune
  hands back is registered, at the end, from its child run's logged model, with the aliases of
  :meth:`~automl_hiap.tracking.Tracker.register` (``champion``, the budget alias). In budget
  mode that is the most accurate feasible trial; in Pareto mode the most accurate front member
  within the budget's tolerance (both by val top-1,
  :func:`~automl_hiap.tune.results.choose_best`).

Choices:

* The parent is found by study name plus a key kept in the Optuna study (user attr
  ``mlflow_key``), so commands on other machines sharing the study find it, and two studies
  that share a name (the default name in two output folders) do not merge. Two commands that
  create a study at the same instant may each start a parent. Worker processes do not look it
  up: the pickled hooks carry its id.
* Every trial logs its model (a cost paid by every trial, not just the best) so the best can
  be registered whichever process or machine ran it. Registering is idempotent: a version
  already registered from the best trial's run is reused, so running a finished study again
  adds no version.
* Child runs left RUNNING by a killed worker whose trial the study has since ended (the tune
  fails such trials when it resumes) are ended FAILED with the study's reason when a command
  opens the study.
* Logged config: a trial's without the ``tune`` section, the parent's without ``tune.storage``
  (a database URL may hold a password). A sampled ``budget`` appears as the config's
  ``budget`` only (logging it twice would clash: MLflow params are write-once).
"""

from __future__ import annotations

import contextlib
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from automl_hiap.config import SearchConfig
from automl_hiap.outcome import SearchMetrics, SearchReport
from automl_hiap.subnet import Subnet
from automl_hiap.tracking import TAG, Run, Tracker, TrackingError, store_errors
from automl_hiap.tune.objective import failure_reason
from automl_hiap.tune.params import BUDGET_PARAM
from automl_hiap.tune.results import TuneReport
from automl_hiap.tune.study import TuneHooks

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from optuna.trial import FrozenTrial

    from automl_hiap.trainer import EpochListener

KEY_ATTR = "mlflow_key"  # Optuna study user attr: tells this study's parent run from others
STUDY_ARTIFACTS = ("pareto.png", "trials.csv", "tune.json")
_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}


class TrackingHooks(TuneHooks):
    """Logs a study to ``tracker``; after :func:`~automl_hiap.tune.run_tune`, ``study_run_id``
    names the parent run, ``registered`` the registered version (if any) and ``notes`` says
    why a registration did not happen."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.study_run_id: str | None = None
        self.registered: ModelVersion | None = None
        self.notes: list[str] = []
        self._config: SearchConfig | None = None
        self._trial: tuple[Run, SearchConfig] | None = None  # the trial running in this process

    # ---------------------------------------------------------------- study (main process)
    @contextmanager
    def study(self, study: optuna.Study, config: SearchConfig) -> Iterator[None]:
        key = study.user_attrs.get(KEY_ATTR)
        if key is None:
            key = uuid.uuid4().hex
            study.set_user_attr(KEY_ATTR, key)
        self._config = config
        params = _study_params(study.study_name, config)
        with self.tracker.study_run(study.study_name, params, key=str(key)) as run:
            self.study_run_id = run.id
            self._close_lost(study.get_trials(deepcopy=False), run.id)
            try:
                yield
            except Exception as exc:  # the run ends FAILED; say why
                with contextlib.suppress(TrackingError):
                    run.set_tags({f"{TAG}fail_reason": failure_reason(exc)})
                raise

    def _close_lost(self, trials: Sequence[FrozenTrial], parent: str) -> None:
        """End the child runs still RUNNING whose trial the study has already ended."""
        by_number = {t.number: t for t in trials}
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}' and attributes.status = 'RUNNING'"
        for found in self._search(query):
            trial = by_number.get(int(found.data.tags.get(f"{TAG}trial", -1)))
            if trial is None or not trial.state.is_finished():
                continue  # running elsewhere, or not a trial of this study
            run = Run(self.tracker, found.info.run_id)
            reason = trial.user_attrs.get("fail_reason")
            if reason:
                run.set_tags({f"{TAG}fail_reason": reason})
            with store_errors(self.tracker.uri, "ending a lost trial run"):
                self.tracker.client.set_terminated(run.id, _STATUS[trial.state.name])

    def study_finished(self, report: TuneReport) -> None:
        assert self.study_run_id is not None, "study_finished() outside study()"
        run = Run(self.tracker, self.study_run_id)
        for name in STUDY_ARTIFACTS:
            if (report.out / name).is_file():
                run.log_artifact(report.out / name)
        states = Counter(row["state"] for row in report.rows)
        metrics: dict[str, Any] = {
            "trials_complete": states["COMPLETE"],
            "trials_pruned": states["PRUNED"],
            "trials_failed": states["FAIL"],
            "front_size": len(report.front),
        }
        best = report.best
        if best is not None:
            for key in ("val_top1", "test_top1", "macs", "target_error", "measured_ms"):
                if best.get(key) is not None:
                    metrics[f"best_{key}"] = best[key]
            if report.is_latency:
                metrics["best_predicted_ms"] = best["cost"] * 1e3
            run.set_tags({f"{TAG}best_trial": best["trial"]})
        run.log_metrics(metrics, step=len(report.rows))
        if best is not None and self.tracker.register_name is not None:
            self.registered = self._register(best["trial"], self.tracker.register_name)

    def _register(self, number: int, name: str) -> ModelVersion | None:
        """Register the logged model of trial ``number``'s finished child run (once)."""
        query = (
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self.study_run_id}' and "
            f"tags.`{TAG}trial` = '{number}' and attributes.status = 'FINISHED'"
        )
        found = self._search(query)
        model_uri = found[0].data.tags.get(f"{TAG}model_uri") if found else None
        if not found or model_uri is None:
            self.notes.append(
                f"trial {number} has no model logged in MLflow (it ran without tracking); "
                f"nothing was registered as {name!r}"
            )
            return None
        run_id = found[0].info.run_id
        client = self.tracker.client
        with store_errors(self.tracker.uri, f"registering model {name!r}"):
            if "'" not in name:
                done = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
                if done:  # an earlier command registered this trial already
                    return client.get_model_version(name, done[0].version)
            with tempfile.TemporaryDirectory() as scratch:
                metrics = SearchMetrics.read(
                    client.download_artifacts(run_id, "metrics.json", scratch)
                )
                subnet = Subnet.load(client.download_artifacts(run_id, "subnet.json", scratch))
        assert self._config is not None
        folder = str(found[0].data.tags.get(f"{TAG}out", "")).partition(":")[2]
        report = SearchReport(Path(folder), subnet, metrics)
        return self.tracker.register(model_uri, report, self._config, name, run_id=run_id)

    def _search(self, query: str) -> list[Any]:
        with store_errors(self.tracker.uri, "looking up runs"):
            return list(
                self.tracker.client.search_runs(
                    [self.tracker.experiment_id], query, order_by=["attributes.start_time DESC"]
                )
            )

    # ---------------------------------------------------------------- trials (any process)
    @contextmanager
    def trial(
        self, trial: optuna.Trial, out: Path, config: SearchConfig
    ) -> Iterator[Sequence[EpochListener]]:
        params = {k: v for k, v in trial.params.items() if k != BUDGET_PARAM}
        logged = config.model_copy(update={"tune": None})
        with self.tracker.trial_run(
            trial.number, params, logged, parent_id=self.study_run_id
        ) as run:
            tags = {f"{TAG}out": trial.user_attrs.get("out", str(out))}
            if "retry_of" in trial.user_attrs:
                tags[f"{TAG}retry_of"] = trial.user_attrs["retry_of"]
            run.set_tags(tags)
            self._trial = run, logged
            try:
                yield [run]
            except Exception as exc:
                if not isinstance(exc, optuna.TrialPruned):  # pruned: tagged by the tracker
                    with contextlib.suppress(TrackingError):
                        run.set_tags({f"{TAG}fail_reason": failure_reason(exc)})
                raise
            finally:
                self._trial = None

    def trial_searched(
        self, trial: optuna.Trial, report: SearchReport, result: dict[str, Any]
    ) -> None:
        assert self._trial is not None, "trial_searched() outside trial()"
        run, config = self._trial
        run.log_search(report, config, register=False)  # only the best is registered
        outcome = {k: result.get(k) for k in ("val_top1", "dense_val_top1", "target_error")}
        if result.get("feasible") is not None:
            outcome["feasible"] = float(result["feasible"])
        run.log_metrics({k: v for k, v in outcome.items() if v is not None})


def _study_params(name: str, config: SearchConfig) -> dict[str, Any]:
    assert config.tune is not None
    return {
        "study": name,
        "model": config.model.name,
        "strategy": config.strategy.name,
        "budget": None if config.budget is None else str(config.budget),
        "tune": config.tune.model_dump(mode="json", exclude={"storage"}, by_alias=True),
    }
