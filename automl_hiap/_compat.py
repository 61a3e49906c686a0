"""Make ``import timm`` work where torchvision's compiled ops cannot load.

timm imports torchvision. On a CPU-only torch with a CUDA build of torchvision (the only
torchvision wheel that matches torch 2.13.0 here), torchvision's ``_C`` library fails to load
and its import then dies registering fake kernels for ``torchvision::nms`` and
``torchvision::qnms``, two ops that were never defined. Defining just those two op schemas
first lets torchvision (and so timm) import; its compiled ops stay unavailable, which timm's
ViTs never use. On a normal install (CUDA torch, or a torchvision whose library loads) this
does nothing.

This is the only place that touches torchvision. ``import automl_hiap`` installs
:func:`install_torchvision_hook`, which costs nothing until something (timm) imports
torchvision; only then is torch consulted and, where torchvision's library cannot load, the
two schemas defined.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_OP_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_library: torch.library.Library | None = None  # kept alive: dropping it would undefine the ops


def torchvision_ops_loadable() -> bool:
    """True when torchvision is absent, imported, or its compiled library loads."""
    import torch

    if "torchvision" in sys.modules:
        return True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True
    package_dir = os.path.dirname(spec.origin)
    candidates = [f for f in os.listdir(package_dir) if f.startswith("_C.")]
    if not candidates:
        return False
    try:
        torch.ops.load_library(os.path.join(package_dir, candidates[0]))
    except OSError:
        return False
    return True


def ensure_torchvision_importable() -> bool:
    """Define the missing op schemas if (and only if) torchvision's ops cannot load.

    Returns True when the schemas were defined by this call.
    """
    import torch

    global _library
    if _library is not None or torch.version.cuda is not None or torchvision_ops_loadable():
        return False
    if all(hasattr(torch.ops.torchvision, name) for name in _OP_SCHEMAS):
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for name, schema in _OP_SCHEMAS.items():
        if not hasattr(torch.ops.torchvision, name):
            _library.define(schema)
    return True


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs :func:`ensure_torchvision_importable` right before torchvision's first import,
    then steps aside (it finds nothing itself: the normal finders import torchvision)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname == "torchvision":
            remove_torchvision_hook()  # before the check, which looks torchvision up itself
            ensure_torchvision_importable()
        return None


_HOOK = _TorchvisionHook()


def install_torchvision_hook() -> None:
    """Make torchvision importable on first use (now, if it is imported already)."""
    if "torchvision" in sys.modules:
        return
    if _HOOK not in sys.meta_path:
        sys.meta_path.insert(0, _HOOK)


def remove_torchvision_hook() -> None:
    if _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
