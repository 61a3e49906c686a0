"""MLflow tracking and model registry, kept apart from the core (the search never imports it).

A :class:`Tracker` is one experiment in one tracking store. ``search`` opens one run
(:meth:`Tracker.search_run`); the Optuna outer loop opens a parent run per study
(:meth:`Tracker.study_run`) and a nested child run per trial (:meth:`Tracker.trial_run`),
through the hooks of :mod:`automl_hiap.tune_tracking`. Every :class:`Run` is an epoch
listener (``run_search(..., listeners=[run])``): it logs each epoch's metrics per phase and the
strategy's current hardened subnet as a small JSON spec (``candidates/<phase>/epoch-NNN.json``)
with its kept units and MACs. :meth:`Run.log_search` logs the final metrics, the artifacts and
the exported model, and registers it.

Choices:

* The store is opened when the tracker is built, before any compute. A server that does not
  answer is an error, or, with ``offline_fallback``, a warning and a local SQLite store in the
  output folder (runs there are tagged with the intended URI).
* For experiments it creates in a local SQLite store, the tracker keeps artifacts beside the
  database file (``<db folder>/mlruns``) rather than in ``./mlruns`` of whatever folder the
  command runs in, so one store is one folder.
* The model is an MLflow pyfunc whose loader module is this module (``_load_pyfunc``) and
  whose data is the export folder (``arch.json`` + ``model.safetensors``). Loading it imports
  the installed automl_hiap and reads those two files. Nothing is pickled; MLflow's "models
  from code" would instead store a Python file with the model and execute it on load.
* Aliases mark the latest best: a new version takes ``champion``, and for a run with a budget
  its budget alias (``macs-50`` for 0.5, ``macs-2p3G`` for 2.3G), when its test top-1 is at
  least that of the version holding the alias. Aliases, not the deprecated stages.
* A search run again in the same output folder (after a crash or kill) continues its MLflow
  run, whose id is kept in ``OUT/mlflow_run.json``, so one search is one run.
* Only rank 0 of a ``torchrun`` job tracks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from automl_hiap.budget import Budget, format_macs, parse_budget
from automl_hiap.config import SearchConfig, TrackingConfig
from automl_hiap.errors import UserError
from automl_hiap.subnet import Subnet

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from torch import nn

    from automl_hiap.outcome import SearchReport
    from automl_hiap.space import SearchSpace
    from automl_hiap.trainer import EpochEnd

DEFAULT_URI = "sqlite:///mlflow.db"  # MLflow's own default store
RUN_FILE = "mlflow_run.json"  # in a search's output folder: the run a resumed search continues
MODEL_NAME = "model"  # artifact name of the logged model
PROBE_TIMEOUT_S = 5.0
TAG = "automl_hiap."  # prefix of this package's run tags


class TrackingError(UserError):
    """The tracking store cannot be reached or refused a request."""


def resolve_uri(configured: str | None = None, flag: str | None = None) -> str:
    """``--tracking-uri``, else ``MLFLOW_TRACKING_URI``, else the YAML's ``tracking.uri``,
    else MLflow's default local SQLite file."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or configured or DEFAULT_URI


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _sqlite_file(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?")[0]
    return Path(path) if path and path != ":memory:" else None


def _probe(uri: str) -> str | None:
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
        return _first_line(reason) if isinstance(reason, BaseException) else str(reason)


class Tracker:
    """One MLflow experiment in one tracking store, checked when built."""

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
        try:
            self.experiment_id = self._open(uri, experiment)
            self.uri = uri
        except TrackingError as exc:
            if fallback_dir is None:
                raise TrackingError(
                    f"{exc}; nothing was run (fix the URI, start the server, or set "
                    "tracking.offline_fallback: true to log to a local store instead)"
                ) from None
            folder = Path(fallback_dir).resolve()
            local = f"sqlite:///{folder / 'mlflow.db'}"
            print(
                f"automl_hiap: warning: {exc}; logging to the local store {local} instead",
                file=sys.stderr,
            )
            self.experiment_id = self._open(local, experiment)
            self.uri = local

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its settings (spawned tune workers get a tracker) and reconnected on
        load to the store actually in use (no fallback there: this one already chose)."""
        return (_reconnect, (self.uri, self.experiment, self.register_name, self.intended_uri))

    def _open(self, uri: str, experiment: str) -> str:
        """Check the store and return the experiment's id (created if missing)."""
        reason = _probe(uri)
        if reason is not None:
            raise TrackingError(f"tracking server {uri} is unreachable ({reason})")
        database = _sqlite_file(uri)
        location = None
        if database is not None:
            try:
                database.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise TrackingError(f"tracking.uri {uri}: {_first_line(exc)}") from None
            location = (database.parent.resolve() / "mlruns").as_uri()
        try:
            self.client = MlflowClient(uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is not None:
                return str(found.experiment_id)
            return str(self.client.create_experiment(experiment, artifact_location=location))
        except Exception as exc:  # any store error: a bad URI, a refusing server, a locked file
            raise TrackingError(f"tracking store {uri}: {_first_line(exc)}") from None

    # ---------------------------------------------------------------- runs
    def _create(self, name: str, kind: str, parent: str | None = None) -> Run:
        tags = {MLFLOW_RUN_NAME: name, f"{TAG}kind": kind}
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

    @contextmanager
    def search_run(
        self,
        config: SearchConfig,
        out: str | Path,
        strategy_name: str | None = None,
        budget: Budget | None = None,
    ) -> Iterator[Run]:
        """One search's run; continues the unfinished run of an earlier attempt in ``out``."""
        params = resolved_params(config, strategy_name, budget)
        marker = Path(out) / RUN_FILE
        run = self._resumable(marker)
        if run is None:
            run = self._create(Path(out).resolve().name, "search")
            run.log_config(config, params)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps({"tracking_uri": self.uri, "run_id": run.id}))
        else:
            run.config = config
            with store_errors(self.uri, "resuming the run"):
                self.client.update_run(run.id, status="RUNNING")
        with self._running(run):
            yield run

    def _resumable(self, marker: Path) -> Run | None:
        try:
            saved = json.loads(marker.read_text())
            if saved["tracking_uri"] != self.uri:
                return None
            info = self.client.get_run(saved["run_id"]).info
        except (OSError, ValueError, KeyError, TypeError, MlflowException):
            return None
        fresh = info.status == "FINISHED" or info.lifecycle_stage != "active"
        if fresh or info.experiment_id != self.experiment_id:
            return None
        return Run(self, info.run_id)

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

    # ---------------------------------------------------------------- registry
    def register(
        self,
        model_uri: str,
        report: SearchReport,
        config: SearchConfig,
        name: str,
        run_id: str | None = None,
    ) -> ModelVersion:
        """Register a logged model (``models:/<model id>``) with its tags, move the aliases it
        earns, and return the version."""
        metrics = report.metrics
        tags = {
            "base_model": config.model.name,
            "dataset": config.data.format,
            "strategy": metrics.strategy,
            "budget": str(metrics.budget),
            "top1": repr(float(metrics.pruned.top1)),
            "macs": str(int(metrics.pruned.macs)),
            "params": str(int(metrics.pruned.params)),
            "macs_ratio": f"{metrics.macs_ratio:.6f}",
        }
        if metrics.speedup is not None:  # None: not measured (e.g. tune.measure: false)
            tags["speedup"] = f"{metrics.speedup:.4f}"
        if config.data.root is not None:
            tags["dataset_root"] = config.data.root
        model_id = (
            model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
        )
        with store_errors(self.uri, f"registering model {name!r}"):
            try:
                self.client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            with use_store(self.uri):  # the registry finds the logged model via the global URI
                version = self.client.create_model_version(
                    name, model_uri, run_id=run_id, tags=tags, model_id=model_id
                ).version
            budget = None if metrics.budget is None else parse_budget(metrics.budget)
            aliases = ["champion"] + ([budget_alias(budget)] if budget is not None else [])
            for alias in aliases:
                if self._earns(name, alias, float(metrics.pruned.top1)):
                    self.client.set_registered_model_alias(name, alias, version)
            return self.client.get_model_version(name, version)

    def _earns(self, name: str, alias: str, top1: float) -> bool:
        try:
            holder = self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return True  # nobody holds it yet
        return top1 >= float(holder.tags.get("top1", "-inf"))


class Run:
    """One MLflow run: an epoch listener, plus what a finished search logs."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker = tracker
        self.id = run_id
        self.config: SearchConfig | None = None  # set by log_config; gives candidates' MACs
        self._space: SearchSpace | None = None

    @property
    def client(self) -> MlflowClient:
        return self.tracker.client

    def _errors(self, action: str) -> Any:
        return store_errors(self.tracker.uri, action)

    # ---------------------------------------------------------------- logging
    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = [Param(k, v) for k, v in _flatten(params).items()]
        with self._errors("logging params"):
            self.client.log_batch(self.id, params=flat)

    def log_metrics(self, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Log the numbers of ``metrics`` (a None, e.g. an unmeasured speed, is left out)."""
        now = int(time.time() * 1000)
        batch = [
            Metric(key, float(value), now, step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        with self._errors("logging metrics"):
            self.client.log_batch(self.id, metrics=batch)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        with self._errors("setting tags"):
            self.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        with self._errors(f"uploading {path}"):
            self.client.log_artifact(self.id, str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        with self._errors(f"uploading {artifact_file}"):
            self.client.log_dict(self.id, dict(data), artifact_file)

    def log_config(self, config: SearchConfig, params: Mapping[str, Any] | None = None) -> None:
        """The resolved config as params and as ``config.yaml``."""
        self.config = config
        params = params if params is not None else resolved_params(config)
        self.log_params(params)
        with self._errors("uploading config.yaml"):
            self.client.log_text(self.id, yaml.safe_dump(dict(params)), "config.yaml")

    def __call__(self, event: EpochEnd) -> None:
        """Epoch listener: ``<phase>/<metric>`` at step = epoch, and the candidate subnet."""
        metrics = dict(event.metrics)
        if event.candidate is not None:
            metrics.update(self._candidate_metrics(event.candidate))
            name = f"candidates/{event.phase}/epoch-{event.epoch:03d}.json"
            self.log_dict(event.candidate.to_dict(), name)
        self.log_metrics({f"{event.phase}/{k}": v for k, v in metrics.items()}, event.epoch)

    def _candidate_metrics(self, subnet: Subnet) -> dict[str, float]:
        """Kept units per granularity, and MACs/params when the config gives the space."""
        layers = subnet.layers
        heads = [h for layer in layers for h in layer.heads]
        kept: dict[str, float] = {
            "kept_attn_blocks": sum(layer.has_attn for layer in layers),
            "kept_ffn_blocks": sum(layer.has_mlp for layer in layers),
            "kept_heads": len(heads),
            "kept_qk_dims": sum(len(h.qk) for h in heads),
            "kept_v_dims": sum(len(h.v) for h in heads),
            "kept_neurons": sum(len(layer.neurons) for layer in layers),
        }
        space = self._space_of_config()
        if space is not None:
            from automl_hiap.cost import dense_cost, subnet_cost

            cost = subnet_cost(space, subnet)
            kept["hardened_macs"] = cost.macs
            kept["hardened_params"] = cost.params
            kept["hardened_macs_ratio"] = cost.macs / dense_cost(space).macs
        return kept

    def _space_of_config(self) -> SearchSpace | None:
        if self._space is None and self.config is not None:
            from automl_hiap.plan import resolve

            self._space = resolve(self.config, meta=True, check_budget=False).space
        return self._space

    def log_search(
        self, report: SearchReport, config: SearchConfig, register: bool = True
    ) -> ModelVersion | None:
        """Final metrics, artifacts and the exported model (its URI in tag
        ``automl_hiap.model_uri``, for registering it later); register it if ``register`` and
        the tracker has a registered-model name. Returns the registered version (or None)."""
        m = report.metrics
        final = {
            "top1": m.pruned.top1,
            "macs": m.pruned.macs,
            "params": m.pruned.params,
            "images_per_s": m.pruned.images_per_s,
            "dense_top1": m.dense.top1,
            "dense_macs": m.dense.macs,
            "dense_params": m.dense.params,
            "dense_images_per_s": m.dense.images_per_s,
            "macs_ratio": m.macs_ratio,
            "speedup": m.speedup,
        }
        final.update({f"strategy/{k}": v for k, v in m.strategy_metrics.items()})
        self.log_metrics(final)
        self.set_tags({f"{TAG}strategy": m.strategy, f"{TAG}base_model": config.model.name})
        for name in ("subnet.json", "metrics.json", "structure.png"):
            if (report.out / name).is_file():
                self.log_artifact(report.out / name)
        model_uri = self.log_model(report.out / "model")
        self.set_tags({f"{TAG}model_uri": model_uri})
        if not register or self.tracker.register_name is None:
            return None
        return self.tracker.register(
            model_uri, report, config, self.tracker.register_name, run_id=self.id
        )

    def log_model(self, folder: str | Path) -> str:
        """Log an export folder as an MLflow pyfunc model of this run; return its URI."""
        from mlflow.models import Model, ModelSignature
        from mlflow.types import Schema, TensorSpec

        from automl_hiap import __version__
        from automl_hiap.export_formats import input_shape
        from automl_hiap.model_files import load

        model: Any = load(folder)
        shape = input_shape(model)
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
            outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, int(model.num_classes)))]),
        )
        import timm

        with self._errors("logging the model"), use_store(self.tracker.uri):
            logged = self.client.create_logged_model(
                self.tracker.experiment_id, name=MODEL_NAME, source_run_id=self.id
            )
            info = Model.log(  # reads the process-wide URI; model_id pins the experiment
                artifact_path=None,
                name=MODEL_NAME,
                flavor=mlflow.pyfunc,
                run_id=self.id,
                model_id=logged.model_id,
                loader_module=__name__,
                data_path=str(folder),
                signature=signature,
                input_example=np.zeros((1, *shape), dtype=np.float32),
                pip_requirements=[f"automl_hiap=={__version__}", f"timm=={timm.__version__}"],
            )
        return str(info.model_uri)


# ------------------------------------------------------------------ helpers
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
        raise TrackingError(f"tracking store {uri}: {action} failed: {_first_line(exc)}") from None


def resolved_params(
    config: SearchConfig, strategy_name: str | None = None, budget: Budget | None = None
) -> dict[str, Any]:
    """The config a search really runs with: the strategy's params with their defaults, the
    effective budget, and no ``tracking`` section (its URI may hold credentials)."""
    from automl_hiap.plan import build_strategy, effective_config

    strategy = build_strategy(effective_config(config, strategy_name))
    data = config.model_dump(mode="json", exclude={"tracking"})
    budget = budget if budget is not None else config.budget
    data["budget"] = None if budget is None else str(budget)
    data["strategy"] = {"name": strategy.name, "params": strategy.params.model_dump(mode="json")}
    return data


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; leaves as JSON (strings stay as they are)."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, float) and not math.isfinite(value):
            flat[name] = str(value)
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def budget_alias(budget: Budget) -> str:
    """``0.5`` -> ``macs-50``, ``0.333`` -> ``macs-33p3``, ``2.3G`` -> ``macs-2p3G``
    (registry aliases allow letters, digits, ``_`` and ``-``)."""
    text = format_macs(budget.value) if budget.absolute else f"{budget.value * 100:.4g}"
    return "macs-" + text.replace(".", "p")


# ------------------------------------------------------------------ pyfunc flavor
class PrunedViTPyfunc:
    """What ``mlflow.pyfunc.load_model`` wraps: float32 images (N, C, H, W) -> logits."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        import torch

        images = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return self.model(images).float().numpy()


def _load_pyfunc(data_path: str) -> PrunedViTPyfunc:
    """MLflow's loader-module entry point: rebuild from arch.json + safetensors."""
    from automl_hiap.model_files import load

    return PrunedViTPyfunc(load(data_path))
