"""Get an exported model back from wherever it was put, as a pruned ``nn.Module``.

A source is a local export folder (or a search's output folder, or an MLflow model folder), a
single-file ``.safetensors`` export, or an MLflow URI: ``models:/NAME@alias``,
``models:/NAME/VERSION``, ``runs:/<run id>/model``, or any artifact URI MLflow can download.
The model is always rebuilt from architecture JSON + safetensors: nothing is unpickled, no
code from the files runs, and neither the search's code paths nor the dense model are needed.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from automl_hiap.errors import UserError
from automl_hiap.export import ARCH_FILE, WEIGHTS_FILE
from automl_hiap.export import load as load_folder

URI_PREFIXES = ("models:/", "runs:/")


def load(source: str | Path, tracking_uri: str | None = None) -> nn.Module:
    """The pruned model at ``source`` (see the module docstring), in eval mode.

    ``tracking_uri`` is the MLflow store that resolves ``models:/`` and ``runs:/`` URIs
    (default: ``MLFLOW_TRACKING_URI``, else MLflow's default).
    """
    with fetched(source, tracking_uri) as path:
        if path.is_file():
            from automl_hiap.export_formats import load_safetensors

            return load_safetensors(path)
        return load_folder(find_export(path))


def pull(source: str | Path, out: str | Path, tracking_uri: str | None = None) -> Path:
    """Write ``arch.json`` + ``model.safetensors`` of ``source`` to ``out`` (checked by
    rebuilding the model first); return ``out``."""
    out = Path(out)
    with fetched(source, tracking_uri) as path:
        if path.is_file():
            from automl_hiap.export import save
            from automl_hiap.export_formats import load_safetensors

            return save(load_safetensors(path), out)
        folder = find_export(path)
        load_folder(folder)  # refuse to hand out files that do not rebuild a model
        out.mkdir(parents=True, exist_ok=True)
        for name in (ARCH_FILE, WEIGHTS_FILE):
            shutil.copyfile(folder / name, out / name)
    return out


def is_uri(source: str | Path) -> bool:
    text = str(source)
    return text.startswith(URI_PREFIXES) or "://" in text


@contextmanager
def fetched(source: str | Path, tracking_uri: str | None = None) -> Iterator[Path]:
    """A local path for ``source``: itself if it exists, else a temporary download."""
    path = Path(source)
    if path.exists():
        yield path
        return
    if not is_uri(source):
        raise UserError(
            f"{source}: no such file or folder, and not an MLflow URI "
            "(models:/NAME@alias, models:/NAME/VERSION, runs:/RUN_ID/model)"
        )
    import mlflow
    from mlflow.exceptions import MlflowException

    from automl_hiap.tracking import use_store

    with tempfile.TemporaryDirectory(prefix="automl_hiap-pull-") as scratch:
        try:
            # MLflow 3.17 resolves models:/ names with the process-wide URI whatever
            # download_artifacts is given, so point it at the store for this call only
            with use_store(tracking_uri or mlflow.get_tracking_uri()):
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=str(source), dst_path=scratch
                )
        except (MlflowException, OSError) as exc:
            first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise UserError(f"{source}: cannot download it: {first}") from None
        yield Path(local)


def find_export(path: Path) -> Path:
    """The folder holding ``arch.json``: ``path`` itself or the one folder below it that does
    (a search's ``model/``, an MLflow model's ``data/model/``)."""
    if (path / ARCH_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.rglob(ARCH_FILE))
    if not found:
        raise UserError(f"{path}: no {ARCH_FILE} in it: not an exported model")
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found[:3])
        raise UserError(f"{path}: several exported models ({listed}); name one of them")
    return found[0]
