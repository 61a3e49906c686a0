"""Compute budgets: a fraction of the dense model's MACs (``0.5``) or an absolute figure
(``2.3G``, ``450M``, ``87100000``)."""

from __future__ import annotations

import re
from dataclasses import dataclass

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([KMGT]?)\s*(?:MACs?)?\s*$")


@dataclass(frozen=True)
class Budget:
    """A MACs target, relative (``ratio``) or absolute (``macs``)."""

    value: float
    absolute: bool

    def target_macs(self, dense_macs: float) -> float:
        """The target in MACs; raises ValueError if it exceeds the dense model."""
        target = self.value if self.absolute else self.value * dense_macs
        if target > dense_macs * (1 + 1e-9):
            raise ValueError(
                f"{self} is larger than the dense model ({format_macs(dense_macs)} MACs)"
            )
        return target

    def __str__(self) -> str:
        return format_macs(self.value) if self.absolute else f"{self.value:g}"


def parse_budget(value: object) -> Budget:
    """Parse ``0.5`` (fraction of dense MACs) or ``'2.3G'`` / ``87e6`` (absolute MACs)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a fraction in (0, 1] or MACs like '2.3G', got {value!r}")
    if isinstance(value, (int, float)):
        number, suffix = float(value), ""
    else:
        match = _PATTERN.match(str(value).upper())
        if match is None:
            raise ValueError(f"expected a fraction in (0, 1] or MACs like '2.3G', got {value!r}")
        number, suffix = float(match.group(1)), match.group(2)
    if number <= 0:
        raise ValueError(f"expected a positive budget, got {value!r}")
    if suffix or number > 1:
        return Budget(number * _SUFFIX[suffix], absolute=True)
    return Budget(number, absolute=False)


def format_macs(macs: float) -> str:
    """``4598765432`` -> ``'4.599G'``."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.4g}{suffix}"
    return f"{macs:.4g}"
