"""Registered versions: a logged model registered under a name, with tags and aliases.

The version's tags carry what a user chooses a model by (base model, dataset, strategy,
budget, top-1, MACs), so the registry alone answers "which model for this budget". Aliases, not
MLflow's deprecated stages, mark the latest best: a new version takes ``champion``, and for a
run with a budget its budget alias (``macs-50`` for 0.5, ``macs-2p3G`` for 2.3G), when its test
top-1 is at least that of the version holding the alias.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from automl_hiap.budget import Budget, format_macs, format_seconds, parse_budget
from automl_hiap.config import SearchConfig
from automl_hiap.tracking.store import store_errors, use_store

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from automl_hiap.outcome import SearchReport

CHAMPION = "champion"


def version_tags(report: SearchReport, config: SearchConfig) -> dict[str, str]:
    """The tags of a registered version."""
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
        # the median of interleaved repeats, never without its interquartile range
        tags["speedup"] = f"{metrics.speedup:.4f}"
        if metrics.speedup_iqr is not None:
            tags["speedup_iqr"] = "{:.4f}-{:.4f}".format(*metrics.speedup_iqr)
            tags["speedup_repeats"] = str(metrics.measure_repeats)
        if metrics.load_average is not None:
            tags["measure_load_average"] = f"{metrics.load_average:.2f}"
    if metrics.latency is not None and metrics.latency.get("measured_ms") is not None:
        tags["latency_ms"] = f"{metrics.latency['measured_ms']:.4g}"
        tags["latency_iqr_ms"] = "{:.4g}-{:.4g}".format(*metrics.latency["measured_iqr_ms"])
        tags["latency_predicted_ms"] = f"{metrics.latency['predicted_ms']:.4g}"
    if config.data.root is not None:
        tags["dataset_root"] = config.data.root
    return tags


def register_version(
    client: MlflowClient,
    uri: str,
    model_uri: str,
    report: SearchReport,
    config: SearchConfig,
    name: str,
    run_id: str | None = None,
) -> ModelVersion:
    """Register a logged model (``models:/<model id>``) of the store at ``uri`` with its tags,
    move the aliases it earns, and return the version. A version run ``run_id`` registered
    under ``name`` before (an attempt killed before its end) is reused, not registered twice."""
    metrics = report.metrics
    tags = version_tags(report, config)
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    with store_errors(uri, f"registering model {name!r}"):
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        version = _earlier_version(client, name, run_id)
        if version is None:
            with use_store(uri):  # the registry finds the logged model via the global URI
                version = client.create_model_version(
                    name, model_uri, run_id=run_id, tags=tags, model_id=model_id
                ).version
        budget = None if metrics.budget is None else parse_budget(metrics.budget)
        aliases = [CHAMPION] + ([budget_alias(budget)] if budget is not None else [])
        for alias in aliases:
            if _earns(client, name, alias, float(metrics.pruned.top1)):
                client.set_registered_model_alias(name, alias, version)
        return client.get_model_version(name, version)


def _earlier_version(client: MlflowClient, name: str, run_id: str | None) -> str | None:
    """The version of ``name`` that run ``run_id`` registered already, if any."""
    if run_id is None or "'" in name or not run_id.isalnum():
        return None  # not expressible in a filter string
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return str(found[0].version) if found else None


def _earns(client: MlflowClient, name: str, alias: str, top1: float) -> bool:
    """Whether a version with test top-1 ``top1`` takes ``alias`` (ties go to the newer)."""
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return True  # nobody holds it yet
    return top1 >= float(holder.tags.get("top1", "-inf"))


def budget_alias(budget: Budget) -> str:
    """``0.5`` -> ``macs-50``, ``0.333`` -> ``macs-33p3``, ``2.3G`` -> ``macs-2p3G``
    (registry aliases allow letters, digits, ``_`` and ``-``)."""
    if budget.latency is not None:  # 8ms -> latency-8ms
        return "latency-" + format_seconds(budget.value).replace(".", "p")
    text = format_macs(budget.value) if budget.absolute else f"{budget.value * 100:.4g}"
    return "macs-" + text.replace(".", "p")
