"""What goes into one MLflow run: params, metrics, tags, artifacts, and each epoch's candidate.

A :class:`Run` is an epoch listener (``run_search(..., listeners=[run])``), so the search loop
stays free of MLflow: it logs each epoch's metrics per phase and the strategy's current
hardened subnet as a small JSON spec (``candidates/<phase>/epoch-NNN.json``) with its kept units
and MACs. :meth:`Run.log_search` logs what a finished search leaves behind.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from automl_hiap.budget import Budget
from automl_hiap.config import SearchConfig
from automl_hiap.subnet import Subnet
from automl_hiap.tracking.pyfunc import MODEL_NAME
from automl_hiap.tracking.pyfunc import log_model as log_pyfunc_model
from automl_hiap.tracking.registry import register_version
from automl_hiap.tracking.store import store_errors

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from automl_hiap.outcome import SearchReport
    from automl_hiap.space import SearchSpace
    from automl_hiap.trainer import EpochEnd

TAG = "automl_hiap."  # prefix of this package's run tags
LOGGED = f"{TAG}logged"  # "true" once a search's results, model and version are all logged
MODEL_URI = f"{TAG}model_uri"


class TrackerLike(Protocol):
    """What a run needs of its :class:`~automl_hiap.tracking.tracker.Tracker` (a protocol, so
    that this module does not import the one that creates runs)."""

    @property
    def client(self) -> MlflowClient: ...
    @property
    def uri(self) -> str: ...
    @property
    def experiment_id(self) -> str: ...
    @property
    def register_name(self) -> str | None: ...


class Run:
    """One MLflow run: an epoch listener, plus what a finished search logs."""

    def __init__(self, tracker: TrackerLike, run_id: str) -> None:
        self.tracker = tracker
        self.id = run_id
        self.config: SearchConfig | None = None  # set by log_config; gives candidates' MACs
        self._space: SearchSpace | None = None
        self.done = False  # an earlier attempt logged everything: log nothing again
        self.configured = False  # params and config.yaml are logged

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

    # ---------------------------------------------------------------- epochs
    def __call__(self, event: EpochEnd) -> None:
        """Epoch listener: ``<phase>/<metric>`` at step = epoch, and the candidate subnet."""
        if self.done:
            return
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

    # ---------------------------------------------------------------- a finished search
    def log_search(
        self, report: SearchReport, config: SearchConfig, register: bool = True
    ) -> ModelVersion | None:
        """Final metrics, artifacts and the exported model (its URI in tag
        ``automl_hiap.model_uri``, for registering it later); register it if ``register`` and
        the tracker has a registered-model name. Returns the registered version (or None).

        Each step is skipped when an earlier, killed attempt did it, so a resumed search logs
        one set of results, one model and one version; tag :data:`LOGGED` closes the set.
        """
        if self.done:
            return None
        with self._errors("reading the run"):
            logged = self.client.get_run(self.id).data
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
            **_measured_spread(m),
        }
        final.update({f"strategy/{k}": v for k, v in m.strategy_metrics.items()})
        if "top1" not in logged.metrics:
            self.log_metrics(final)
        self.set_tags({f"{TAG}strategy": m.strategy, f"{TAG}base_model": config.model.name})
        for name in ("subnet.json", "metrics.json", "structure.png"):
            if (report.out / name).is_file():
                self.log_artifact(report.out / name)
        model_uri = logged.tags.get(MODEL_URI) or self._logged_model()
        if model_uri is None:
            model_uri = self.log_model(report.out / "model")
        self.set_tags({MODEL_URI: model_uri})
        registered = self.tracker.register_name
        version = None
        if register and registered is not None:
            version = register_version(
                self.client, self.tracker.uri, model_uri, report, config, registered, self.id
            )
        self.set_tags({LOGGED: "true"})
        return version

    def _logged_model(self) -> str | None:
        """The URI of this run's fully logged model, if an earlier attempt logged one."""
        with self._errors("looking up the logged model"):
            found = self.client.search_logged_models(
                [self.tracker.experiment_id], f"source_run_id = '{self.id}'"
            )
        ready = [m for m in found if m.name == MODEL_NAME and str(m.status) == "READY"]
        return f"models:/{ready[0].model_id}" if ready else None

    def log_model(self, folder: str | Path) -> str:
        """Log an export folder as an MLflow pyfunc model of this run; return its URI."""
        tracker = self.tracker
        return log_pyfunc_model(tracker.client, tracker.uri, tracker.experiment_id, self.id, folder)


def _measured_spread(m: Any) -> dict[str, float]:
    """The interquartile ranges and the machine load of the speed measurement (and, for a
    latency budget, predicted vs measured latency): a speed-up is never logged without them."""
    out: dict[str, float] = {}
    if m.speedup_iqr is not None:
        out["speedup_iqr_low"], out["speedup_iqr_high"] = m.speedup_iqr
    if m.load_average is not None:
        out["measure_load_average"] = m.load_average
    latency = m.latency or {}
    for key in ("target_ms", "predicted_ms", "measured_ms"):
        if latency.get(key) is not None:
            out[f"latency_{key}"] = latency[key]
    if latency.get("measured_iqr_ms") is not None:
        out["latency_measured_iqr_low_ms"], out["latency_measured_iqr_high_ms"] = latency[
            "measured_iqr_ms"
        ]
    return out


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
