"""automl_hiap: structured pruning of Vision Transformers as architecture search.

The public names below load on first use (PEP 562), so ``import automl_hiap`` and the CLI's
``--help`` do not pay for torch and timm; ``_compat`` arms its torchvision fix-up for whenever
timm is first imported.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from automl_hiap import _compat

_compat.install_torchvision_hook()

__version__ = "0.1.0"

_HOMES = {
    "automl_hiap.budget": ("Budget", "parse_budget"),
    "automl_hiap.cost": ("Cost", "dense_cost", "expected_macs", "expected_params", "subnet_cost"),
    "automl_hiap.errors": ("ConfigError", "UserError"),
    "automl_hiap.masking": ("Masks",),
    "automl_hiap.model_files": ("save",),
    "automl_hiap.models": ("ModelSpec",),
    "automl_hiap.slicing": ("slice_subnet",),
    "automl_hiap.sources": ("load",),  # folders, files, models:/ and runs:/ URIs
    "automl_hiap.keeps": ("BlockKeep",),
    "automl_hiap.space": ("SearchSpace",),
    "automl_hiap.subnet": ("HeadKeep", "LayerKeep", "Subnet"),
    "automl_hiap.units": ("Unit",),  # torch-free; automl_hiap.space re-exports it
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}
__all__ = [  # = the names of _HOMES (a test checks), spelled out for linters and readers
    "BlockKeep",
    "Budget",
    "ConfigError",
    "Cost",
    "HeadKeep",
    "LayerKeep",
    "Masks",
    "ModelSpec",
    "SearchSpace",
    "Subnet",
    "Unit",
    "UserError",
    "dense_cost",
    "expected_macs",
    "expected_params",
    "load",
    "parse_budget",
    "save",
    "slice_subnet",
    "subnet_cost",
]

if TYPE_CHECKING:
    from automl_hiap.budget import Budget, parse_budget
    from automl_hiap.cost import Cost, dense_cost, expected_macs, expected_params, subnet_cost
    from automl_hiap.errors import ConfigError, UserError
    from automl_hiap.keeps import BlockKeep
    from automl_hiap.masking import Masks
    from automl_hiap.model_files import save
    from automl_hiap.models import ModelSpec
    from automl_hiap.slicing import slice_subnet
    from automl_hiap.sources import load
    from automl_hiap.space import SearchSpace
    from automl_hiap.subnet import HeadKeep, LayerKeep, Subnet
    from automl_hiap.units import Unit


def __getattr__(name: str) -> Any:
    home = _HOME_OF.get(name)
    if home is None:
        raise AttributeError(f"module 'automl_hiap' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
