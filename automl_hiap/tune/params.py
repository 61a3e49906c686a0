"""The tuned fields: the YAML's ``tune.params`` ranges checked against the strategy's Params.

A range is checked before any compute, like ``strategy.params`` itself: the field must exist,
its type must accept the range (an int field needs ``int: true``) and both endpoints (or every
choice) must validate. ``budget`` is the one name that is not a strategy field: in Pareto mode
it tunes the budget itself, as a fraction of the dense model's cost: its MACs, or with a
latency budget (which names the device settings) its predicted latency.
"""

from __future__ import annotations

import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import optuna
from pydantic import ValidationError

from automl_hiap import plugins
from automl_hiap.budget import Budget
from automl_hiap.config import SearchConfig, TuneConfig, TuneRange
from automl_hiap.cost_model import CostModel, subnet_total
from automl_hiap.errors import ConfigError
from automl_hiap.selection import cheapest
from automl_hiap.space import SearchSpace
from automl_hiap.strategy import Strategy

BUDGET_PARAM = "budget"  # tunes the budget's fraction of dense itself (Pareto mode only)


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
                f"{key}: expected fractions of the dense model's cost (MACs, or latency with "
                f"a latency budget) in (0, 1], got {value!r}"
            )
    if spec.integer:
        raise ConfigError(f"{key}: expected a float range of fractions, not int: true")


def check_budget_floor(
    tune: TuneConfig,
    strategy: type[Strategy],
    space: SearchSpace,
    cost: CostModel,
    dense_cost: float,
    source: str = "",
) -> None:
    """A tuned budget's lowest fraction must reach the smallest subnet the space allows (else
    those trials would all fail, one line each, after the dense phase)."""
    spec = tune.params.get(BUDGET_PARAM)
    if spec is None or BUDGET_PARAM in strategy.Params.model_fields:
        return
    low = min(spec.choices) if spec.choices is not None else spec.low
    floor = subnet_total(cost, space, cheapest(space, cost)) / dense_cost
    if low is not None and low < floor:
        head = f"{source}: " if source else ""
        what = "MACs" if cost.unit == "MACs" else "predicted latency"
        smallest, dense = cost.describe(floor * dense_cost), cost.describe(dense_cost)
        raise ConfigError(
            f"{head}tune.params.budget: expected fractions of at least {floor:.3f}, the "
            f"smallest subnet space.units and space.constraints allow ({smallest} of the "
            f"dense {what} {dense}), got {low!r}"
        )


def with_params(
    config: SearchConfig, params: dict[str, Any], dense_cost: float | None = None
) -> SearchConfig:
    """``config`` with sampled values merged into ``strategy.params`` (and the budget: a
    sampled fraction of a latency budget's ``dense_cost``, the dense model's seconds, keeps
    the budget's device settings)."""
    values = dict(params)
    update: dict[str, Any] = {}
    if BUDGET_PARAM in values and BUDGET_PARAM not in _strategy_fields(config):
        share = float(values.pop(BUDGET_PARAM))
        given = config.budget
        if given is not None and given.latency is not None:
            assert dense_cost is not None, "a latency budget's fraction needs the dense latency"
            update["budget"] = Budget(share * dense_cost, absolute=True, latency=given.latency)
        else:
            update["budget"] = Budget(share, absolute=False)
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
