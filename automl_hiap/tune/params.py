"""The tuned fields: the YAML's ``tune.params`` ranges checked against the strategy's Params.

A range is checked before any compute, like ``strategy.params`` itself: the field must exist,
its type must accept the range (an int field needs ``int: true``) and both endpoints (or every
choice) must validate. ``budget`` is the one name that is not a strategy field: in Pareto mode
it tunes the MACs fraction itself.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import optuna
from pydantic import ValidationError

from automl_hiap import plugins
from automl_hiap.budget import Budget
from automl_hiap.config import SearchConfig, TuneConfig, TuneRange
from automl_hiap.errors import ConfigError
from automl_hiap.strategy import Strategy

BUDGET_PARAM = "budget"  # tunes the MACs fraction itself (Pareto mode only)


def _kinds(annotation: Any) -> set[Any]:
    """The plain types a field accepts (``Optional``, ``Annotated`` and unions unwrapped)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _kinds(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return set().union(*(_kinds(arg) for arg in get_args(annotation)))
    if origin is Literal:
        return {Literal}
    return set() if annotation is type(None) else {annotation}


def check_params(
    strategy: type[Strategy], tune: TuneConfig, fixed: dict[str, Any], source: str = ""
) -> None:
    """Every tuned field exists on the strategy's Params and its range fits the field's type
    and constraints (endpoints and choices are validated like ``strategy.params``)."""
    head = f"{source}: " if source else ""
    fields = strategy.Params.model_fields
    for name, spec in tune.params.items():
        key = f"{head}tune.params.{name}"
        if name == BUDGET_PARAM and name not in fields:
            _check_budget_range(spec, key, tune.pareto)
            continue
        if name not in fields:
            known = ", ".join(fields) or "(none)"
            raise ConfigError(
                f"{key}: strategy {strategy.name!r} has no parameter {name}; expected one of "
                f"{known} (or {BUDGET_PARAM}, with pareto)"
            )
        kinds = _kinds(fields[name].annotation)
        if spec.choices is None:
            wanted = {int, float} if spec.integer else {float}
            if not kinds & wanted and Any not in kinds:
                shown = "/".join(sorted(getattr(k, "__name__", str(k)) for k in kinds))
                what = "an integer range" if spec.integer else "a float range"
                hint = "; add int: true" if int in kinds and not spec.integer else ""
                raise ConfigError(
                    f"{key}: {what} does not fit the field's type {shown}{hint} "
                    "(or give choices: [...])"
                )
            values: list[Any] = [spec.low, spec.high]
            if spec.integer:
                values = [int(v) for v in values]
        else:
            bad = [
                c for c in spec.choices if not isinstance(c, (bool, int, float, str, type(None)))
            ]
            if bad:
                raise ConfigError(
                    f"{key}.choices: expected numbers, strings, booleans or null, got {bad[0]!r}"
                )
            values = list(spec.choices)
        for value in values:
            try:
                strategy.Params.model_validate({**fixed, name: value})
            except ValidationError as exc:
                for error in exc.errors():
                    if error["loc"][:1] == (name,):
                        message = error["msg"].removeprefix("Value error, ")
                        raise ConfigError(f"{key}: {value!r} is not allowed: {message}") from None


def _check_budget_range(spec: TuneRange, key: str, pareto: bool) -> None:
    if not pareto:
        raise ConfigError(
            f"{key}: the budget is tuned only with pareto (a single objective targets --budget)"
        )
    values = spec.choices if spec.choices is not None else [spec.low, spec.high]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
            raise ConfigError(
                f"{key}: expected fractions of the dense MACs in (0, 1], got {value!r}"
            )
    if spec.integer:
        raise ConfigError(f"{key}: expected a float range of fractions, not int: true")


def with_params(config: SearchConfig, params: dict[str, Any]) -> SearchConfig:
    """``config`` with sampled values merged into ``strategy.params`` (and the budget)."""
    values = dict(params)
    update: dict[str, Any] = {}
    if BUDGET_PARAM in values and BUDGET_PARAM not in _strategy_fields(config):
        update["budget"] = Budget(float(values.pop(BUDGET_PARAM)), absolute=False)
    strategy = config.strategy.model_copy(update={"params": {**config.strategy.params, **values}})
    return config.model_copy(update={"strategy": strategy, **update})


def _strategy_fields(config: SearchConfig) -> dict[str, Any]:
    return plugins.get(config.strategy.name).Params.model_fields


def suggest(trial: optuna.Trial, name: str, spec: TuneRange) -> Any:
    """One value of ``name`` from its range (the range's type, step and log scale)."""
    if spec.choices is not None:
        return trial.suggest_categorical(name, spec.choices)
    assert spec.low is not None and spec.high is not None
    if spec.integer:
        step = int(spec.step or 1)
        return trial.suggest_int(name, int(spec.low), int(spec.high), step=step, log=spec.log)
    return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
