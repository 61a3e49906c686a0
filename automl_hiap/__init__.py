"""automl_hiap: structured pruning of Vision Transformers as architecture search."""

from automl_hiap import _compat

_compat.ensure_torchvision_importable()  # before anything imports timm (and torchvision)

from automl_hiap.budget import Budget, parse_budget  # noqa: E402
from automl_hiap.cost import Cost, dense_cost, expected_macs, expected_params, subnet_cost  # noqa: E402
from automl_hiap.errors import ConfigError, UserError  # noqa: E402
from automl_hiap.masking import Masks  # noqa: E402
from automl_hiap.model_files import save  # noqa: E402
from automl_hiap.models import ModelSpec  # noqa: E402
from automl_hiap.slicing import slice_subnet  # noqa: E402
from automl_hiap.sources import load  # noqa: E402  (folders, files, models:/ and runs:/ URIs)
from automl_hiap.space import BlockKeep, SearchSpace, Unit  # noqa: E402
from automl_hiap.subnet import HeadKeep, LayerKeep, Subnet  # noqa: E402

__version__ = "0.1.0"

__all__ = [
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
