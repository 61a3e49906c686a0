"""Tensor files from outside: safetensors files and torch checkpoints, read without running code.

A safetensors file is opened header first (:func:`header`: names, shapes and metadata, no tensor
read), so a caller compares it with what it expects (:func:`mismatch`) before anything is
allocated. Torch files are read with ``weights_only`` (tensors and plain containers; pickled
code is refused). Every failure is one :class:`UserError` line naming the file: these files
come from other machines, and a traceback from deep inside the readers helps nobody.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch import Tensor

from automl_hiap.errors import UserError

Shapes = dict[str, tuple[int, ...]]
LONGEST = 200  # characters of a reader's message quoted in an error line


def one_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type if there is none)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= LONGEST else text[: LONGEST - 3] + "..."


def shapes(state: Mapping[str, Tensor]) -> Shapes:
    return {name: tuple(tensor.shape) for name, tensor in state.items()}


def header(path: str | Path) -> tuple[dict[str, str], Shapes]:
    """The metadata and tensor shapes of a safetensors file; no tensor is read."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            names = handle.keys()
            found = {name: tuple(handle.get_slice(name).get_shape()) for name in names}
            return dict(handle.metadata() or {}), found
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None


def mismatch(expected: Shapes, found: Shapes) -> str | None:
    """How ``found`` differs from ``expected`` (None: same names and shapes)."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    resized = [name for name in expected if name in found and found[name] != expected[name]]
    problems = []
    if missing:
        problems.append(f"{_count(missing, 'missing')} (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{_count(unexpected, 'unexpected')} (e.g. {', '.join(unexpected[:3])})")
    if resized:
        name = resized[0]
        problems.append(
            f"{_count(resized, 'other-shaped')} (e.g. {name} is {list(found[name])}, "
            f"expected {list(expected[name])})"
        )
    return "; ".join(problems) or None


def _count(names: list[str], what: str) -> str:
    return f"{len(names)} {what} tensor{'s' if len(names) > 1 else ''}"


def read_safetensors(
    path: str | Path, expected: Shapes | None = None, against: str = "the model"
) -> dict[str, Tensor]:
    """The tensors of a safetensors file, on the host; with ``expected``, its header is
    compared first and a file that does not fit ``against`` is refused unread."""
    if expected is not None:
        problem = mismatch(expected, header(path)[1])
        if problem is not None:
            raise UserError(f"{path}: does not fit {against}: {problem}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({one_line(exc)})") from None


def read_checkpoint(path: str | Path, hint: str = "", map_location: str = "cpu") -> Any:
    """A torch file's content, read with ``weights_only`` (no pickled code) onto
    ``map_location``; ``hint`` (what the user can do about a bad file) ends the error line."""
    suffix = f"; {hint}" if hint else ""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not the user's job
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines()]
        blocked = [line for line in lines if "GLOBAL" in line]
        if not blocked:
            detail = next((line for line in lines if line.startswith("Unsupported")), "a pickle")
            message = f"{path}: not a torch file weights_only reads ({detail}){suffix}"
            raise UserError(message) from None
        raise UserError(
            f"{path}: refused: it pickles objects other than tensors ({blocked[0][:LONGEST]}); "
            f"nothing in it was run{suffix}"
        ) from None
    except Exception as exc:  # torch.load raises a dozen types for damaged files
        detail = f"{type(exc).__name__}: {one_line(exc)}"
        raise UserError(f"{path}: not a readable torch file ({detail}){suffix}") from None
