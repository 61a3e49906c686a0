"""The study's dense model: a space without weights trains it once, and every trial starts there.

Without this every trial of a space with no checkpoint (and no hub weights) would train the
same dense model from scratch. The command that opens the study trains it instead, into
``OUT/dense/<key>/`` (``key``: a hash of the model, data and train settings it depends on, so
changed settings never reuse a stale one), resumable from its phase checkpoint like any
training, and writes ``model.safetensors`` atomically (a safetensors file holds tensors only,
so loading it runs no code); the trials then run with ``model.checkpoint`` pointing at it.
Commands sharing ``OUT`` take an exclusive ``flock`` on ``OUT/dense/<key>/lock`` around the
check-and-train, so a second one waits for the first instead of training again; the lock dies
with its process, so a killed trainer never blocks the resume. Under ``torchrun`` every rank
trains it together, as in a search.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file
from torch import nn

from automl_hiap.atomic import atomic_path
from automl_hiap.config import SearchConfig
from automl_hiap.console import Console
from automl_hiap.distributed import is_distributed, is_main_process
from automl_hiap.errors import UserError
from automl_hiap.search import matching_data
from automl_hiap.trainer import Trainer
from automl_hiap.tune.objective import broadcast

WEIGHTS = "model.safetensors"


def settings_key(config: SearchConfig) -> str:
    """What the dense model depends on: the model, data and train settings."""
    settings = [config.model, config.data, config.train]
    text = json.dumps([s.model_dump(mode="json") for s in settings], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dense_folder(config: SearchConfig, out: Path) -> Path | None:
    """Where the study's dense model goes; None when the space has weights (checked before any
    compute: a space with neither weights nor dense epochs is an error)."""
    if config.model.checkpoint is not None or config.model.pretrained:
        return None
    if config.train.dense_epochs == 0:
        raise UserError(
            f"{config.where('model.checkpoint')}: the model has no weights; give a checkpoint, "
            "set model.pretrained, or train.dense_epochs to train it first"
        )
    return out / "dense" / settings_key(config)


def study_dense(
    config: SearchConfig, model: nn.Module, folder: Path, progress: bool = True
) -> SearchConfig:
    """``config`` with ``model.checkpoint`` at the dense model in ``folder``, trained there
    from ``model`` (freshly initialized) first if no command has yet."""
    weights = folder / WEIGHTS
    with _exclusive(folder / "lock") if is_main_process() else contextlib.nullcontext():
        if not broadcast(weights.is_file()):  # rank 0 decides for every rank
            _train(config, model, folder, progress)
        if is_distributed():
            dist.barrier()  # the weights are written before any rank reads them
    model_config = config.model.model_copy(update={"checkpoint": str(weights)})
    return config.model_copy(update={"model": model_config})


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes or the process dies
        yield


def _train(config: SearchConfig, model: nn.Module, folder: Path, progress: bool) -> None:
    epochs = config.train.dense_epochs
    if is_main_process():
        print(f"dense model: trained once for the study ({epochs} epochs) in {folder}", flush=True)
    data = matching_data(config, model)
    trainer = Trainer(
        config.train, data.train, data.val, checkpoint_dir=folder / "checkpoints", progress=progress
    )
    say = Console(bars=True) if progress else Console.silent()
    trainer.console = say
    trainer.listeners.append(say)
    trainer.fit(model, epochs, phase="dense")
    if is_main_process():
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(folder / WEIGHTS) as temporary:
            save_file(state, str(temporary))
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # only a resume needed them
