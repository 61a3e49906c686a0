"""Budgets: a fraction of the dense model's MACs (``0.5``), absolute MACs (``2.3G``,
``450M``, ``87100000 MACs``) or a latency on this (or a profiled) device (``8ms``, ``450us``).

A bare number is a fraction, so it must be at most 1: ``1.5`` is far more likely a typo than
1.5 MACs, and absolute figures say their unit. A latency is measured at a batch size, a number
of CPU threads and a dtype; the YAML form names them (all optional)::

    budget: {latency: 8ms, batch: 1, threads: 2, dtype: float32, table: edge.json}

``table`` is a latency table measured elsewhere (``automl_hiap profile``); without it the
search profiles this machine first (cached). Torch-free: the config imports it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_NUMBER = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_MACS = re.compile(rf"^\s*{_NUMBER}\s*([KMGT]?)\s*(MACS?)?\s*$")
_TIME = re.compile(rf"^\s*{_NUMBER}\s*(MS|US|µS|S)\s*$")
_SECONDS = {"S": 1.0, "MS": 1e-3, "US": 1e-6, "µS": 1e-6}
DTYPES = ("float32", "bfloat16", "float16")
EXPECTED = (
    "a fraction ≤ 1, or an absolute value like 2.3G (MACs: '87.1M', '87100000 MACs') "
    "or a latency like 8ms"
)


@dataclass(frozen=True)
class Latency:
    """Where a latency target holds: batch size, CPU threads (None: torch's default on the
    machine that runs) and dtype, and the profiled table that predicts it (None: profile)."""

    batch: int = 1
    threads: int | None = None
    dtype: str = "float32"
    table: str | None = None


@dataclass(frozen=True)
class Budget:
    """A MACs target, relative (``ratio``) or absolute (``macs``), or with ``latency`` set a
    latency target of ``value`` seconds per forward pass."""

    value: float
    absolute: bool
    latency: Latency | None = None

    @property
    def is_latency(self) -> bool:
        return self.latency is not None

    def target_macs(self, dense_macs: float) -> float:
        """The target in MACs; raises ValueError if it exceeds the dense model."""
        if self.latency is not None:
            raise ValueError(f"{self} is a latency, not a MACs target")
        target = self.value if self.absolute else self.value * dense_macs
        if target > dense_macs * (1 + 1e-9):
            raise ValueError(
                f"{self} is larger than the dense model ({format_macs(dense_macs)} MACs)"
            )
        return target

    def __str__(self) -> str:
        if self.latency is not None:
            return format_seconds(self.value)
        return format_macs(self.value) if self.absolute else f"{self.value:g}"


def parse_budget(value: object) -> Budget:
    """Parse a budget (see the module docstring); raises ValueError naming what is expected."""
    if isinstance(value, Mapping):
        return _parse_latency_mapping(value)
    if isinstance(value, bool) or value is None:
        raise ValueError(f"expected {EXPECTED}, got {value!r}")
    if isinstance(value, (int, float)):
        number, suffix, unit = float(value), "", None
    else:
        text = str(value).upper()
        timed = _TIME.match(text)
        if timed is not None:
            seconds = float(timed.group(1)) * _SECONDS[timed.group(2)]
            if not seconds > 0 or not math.isfinite(seconds):
                raise ValueError(f"expected a positive latency like 8ms, got {value!r}")
            return Budget(seconds, absolute=True, latency=Latency())
        match = _MACS.match(text)
        if match is None:
            raise ValueError(f"expected {EXPECTED}, got {value!r}")
        number, suffix, unit = float(match.group(1)), match.group(2), match.group(3)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"expected a positive, finite budget, got {value!r}")
    if suffix or unit:
        return Budget(number * _SUFFIX[suffix], absolute=True)
    if number > 1:
        raise ValueError(f"{value!r} is a bare number > 1; expected {EXPECTED}")
    return Budget(number, absolute=False)


def _parse_latency_mapping(value: Mapping[object, object]) -> Budget:
    """``{latency: 8ms, batch: 1, threads: 2, dtype: float32, table: FILE}``."""
    known = {"latency", "batch", "threads", "dtype", "table"}
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r}; a budget mapping has {sorted(known)}")
    if "latency" not in value:
        raise ValueError("a budget mapping needs latency: (e.g. {latency: 8ms, batch: 1})")
    target = parse_budget(value["latency"])
    if target.latency is None:
        raise ValueError(f"latency: expected a time like 8ms or 450us, got {value['latency']!r}")
    batch, threads = value.get("batch", 1), value.get("threads")
    for key, number in (("batch", batch), ("threads", threads)):
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)):
            raise ValueError(f"{key}: expected a positive integer, got {number!r}")
        if number is not None and number < 1:
            raise ValueError(f"{key}: expected a positive integer, got {number!r}")
    dtype = value.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    table = value.get("table")
    if table is not None and (not isinstance(table, str) or not table):
        raise ValueError(f"table: expected a file path, got {table!r}")
    settings = Latency(
        batch=batch,  # type: ignore[arg-type]  # checked above
        threads=threads,  # type: ignore[arg-type]
        dtype=str(dtype),
        table=table,
    )
    return Budget(target.value, absolute=True, latency=settings)


def format_macs(macs: float) -> str:
    """``4598765432`` -> ``'4.599G'``."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.4g}{suffix}"
    return f"{macs:.4g}"


def format_seconds(seconds: float) -> str:
    """``0.008`` -> ``'8ms'``, ``4.5e-4`` -> ``'450us'``."""
    if seconds >= 1:
        return f"{seconds:.4g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.4g}ms"
    return f"{seconds * 1e6:.4g}us"
