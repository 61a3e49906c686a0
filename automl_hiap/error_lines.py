"""Pydantic's validation errors as the one line each that users read: ``key.path: what was
expected, got value``, with the keys a mapping takes when a key is unknown. Shared by the space
file (:mod:`automl_hiap.config`) and the strategy params checked in :mod:`automl_hiap.plan`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError


def _describe(error: Any, model: type[BaseModel]) -> str:
    """One readable phrase for one pydantic error."""
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        fields = _fields_at(model, error["loc"][:-1])
        return "unknown key" + (f" (expected one of: {', '.join(fields)})" if fields else "")
    if kind == "missing":
        return "missing item" if isinstance(error["loc"][-1], int) else "missing required key"
    message = message.removeprefix("Value error, ")
    value = error.get("input")
    said = ", got " in message or message.startswith((f"{value} ", f"{value!r} "))
    if "input" in error and not isinstance(value, dict) and not said:
        shown = repr(value)
        return f"{message}, got {shown if len(shown) <= 80 else shown[:77] + '...'}"
    return message


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for key in loc:
        field = getattr(current, "model_fields", {}).get(key)
        if field is None:
            return []
        current = field.annotation
        args = getattr(current, "__args__", ())
        current = next((a for a in (current, *args) if hasattr(a, "model_fields")), None)
        if current is None:
            return []
    fields = getattr(current, "model_fields", {})
    return [field.alias or name for name, field in fields.items()]  # the YAML's key names


def error_lines(
    exc: ValidationError, model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], str]]:
    """(key path, what was expected) of every problem pydantic found."""
    return [
        ((*prefix, *(str(part) for part in error["loc"])), _describe(error, model))
        for error in exc.errors()
    ]


def format_validation_error(
    exc: ValidationError, model: type[BaseModel], source: str = "", prefix: str = ""
) -> str:
    """One line per problem: ``source: key.path: what was expected``."""
    head = f"{source}: " if source else ""
    parts = tuple(prefix.split(".")) if prefix else ()
    return "\n".join(
        f"{head}{'.'.join(key) or '(top level)'}: {message}"
        for key, message in error_lines(exc, model, parts)
    )
