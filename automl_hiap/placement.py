"""Where tensors live and how they compute: the one place that decides it.

A :class:`Placement` is owned by the trainer (``trainer.placement``; ``trainer.device`` is its
device). Search, evaluation, measurement and every strategy ask it to move models and tensors
(``placement.module(m)``, ``placement.tensor(t)``, or ``.to(trainer.device)``) and never name a
device themselves, so a model, teacher, batch, gate or score cannot end up on the wrong one.
It also holds the settings that make a GPU fast, read from the ``train:`` section:

* ``device``: ``auto`` is torchrun's local GPU (``LOCAL_RANK``), else the current CUDA device,
  else the CPU; ``cpu``, ``cuda``, ``cuda:N`` force one.
* ``amp``: ``auto`` is bf16 autocast on CUDA and fp32 elsewhere (what the trainer always did);
  ``fp16`` adds a gradient scaler (:meth:`grad_scaler`); ``off`` is fp32 everywhere.
* ``tf32``: float32 matmuls on TF32 tensor cores (CUDA only; the exactness tests turn it off).
* ``compile`` / ``compile_mode``: ``torch.compile`` of the training and evaluation forward and
  of the models being measured.
* ``pin_memory`` (default: on for CUDA): page-locked batches, copied with ``non_blocking``.

Checkpoints are read on the host (:data:`MAP_LOCATION`) and copied into the live parameters by
``load_state_dict``, which works whatever the device of the run that wrote them. Random draws
that decide structures (HiAP's gate noise) are made on the host and moved, so a seed samples
the same structures on every device.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from automl_hiap.config import TrainConfig

Amp = Literal["bf16", "fp16", "off"]
M = TypeVar("M", bound=nn.Module)
MAP_LOCATION = "cpu"  # torch.load of checkpoints; load_state_dict copies to the device
_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def auto_device() -> torch.device:
    """torchrun's local GPU, else the current CUDA device, else the CPU."""
    if torch.cuda.is_available():
        if "LOCAL_RANK" in os.environ:
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class Placement:
    """A device plus how to compute on it (autocast dtype, compile) and feed it (pinning)."""

    device: torch.device
    amp: Amp = "off"
    compile: bool = False
    compile_mode: str | None = None
    compile_backend: str = "inductor"
    pin_memory: bool = False

    @classmethod
    def resolve(
        cls, config: TrainConfig | None = None, device: torch.device | str | None = None
    ) -> Placement:
        """The placement of a run: ``device`` (if given) or ``train.device``, with the
        config's AMP, TF32, compile and pinning settings (``auto`` resolved for that device)."""
        name = device if device is not None else (config.device if config else "auto")
        target = auto_device() if name == "auto" else torch.device(name)
        cuda = target.type == "cuda"
        if config is None:
            return cls(target, amp="bf16" if cuda else "off", pin_memory=cuda)
        amp: Amp = config.amp if config.amp != "auto" else ("bf16" if cuda else "off")
        if cuda:
            set_tf32(config.tf32)
        return cls(
            target,
            amp=amp,
            compile=config.compile,
            compile_mode=config.compile_mode,
            pin_memory=cuda if config.pin_memory is None else config.pin_memory and cuda,
        )

    @classmethod
    def of(cls, model: nn.Module) -> Placement:
        """Where ``model`` already is (fp32, no compile): for measuring a model as given."""
        first = next(model.parameters(), None)
        return cls(torch.device("cpu") if first is None else first.device)

    # ------------------------------------------------------------------ moving
    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def module(self, model: M) -> M:
        """Move ``model`` (in place, as ``nn.Module.to`` does) and return it."""
        return model.to(self.device)

    def tensor(self, value: Tensor) -> Tensor:
        """Move one tensor (asynchronously from pinned memory)."""
        return value.to(self.device, non_blocking=self.pin_memory)

    def batch(self, *values: Tensor) -> tuple[Tensor, ...]:
        return tuple(self.tensor(v) for v in values)

    def generator(self, seed: int) -> torch.Generator:
        """A host generator: draws made with it and then moved are the same on every device."""
        return torch.Generator().manual_seed(seed)

    # ------------------------------------------------------------------ computing
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Mixed precision for forward passes (a no-op with ``amp: off``)."""
        if self.amp == "off":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_AMP_DTYPES[self.amp])

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 (bf16 and fp32 need none)."""
        if self.amp != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def compiled(self, model: nn.Module) -> nn.Module:
        """``torch.compile(model)`` when compiling, else ``model`` itself."""
        if not self.compile:
            return model
        compiled: Any = torch.compile(model, mode=self.compile_mode, backend=self.compile_backend)
        return compiled

    def synchronize(self) -> None:
        """Wait for queued device work (host clocks are only meaningful after it)."""
        if self.is_cuda:
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def timed(self) -> Iterator[Timing]:
        """Time a region: CUDA events on a GPU (the device's work, not the launches), else the
        host clock; ``seconds`` is set when the region ends."""
        timing = Timing()
        if self.is_cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            yield timing
            end.record()
            end.synchronize()
            timing.seconds = start.elapsed_time(end) / 1000.0
        else:
            began = time.perf_counter()
            yield timing
            timing.seconds = time.perf_counter() - began


@dataclass
class Timing:
    """The duration of a :meth:`Placement.timed` region, once it has ended."""

    seconds: float = float("nan")


def set_tf32(enabled: bool) -> None:
    """TF32 for CUDA float32 matmuls and convolutions (process-wide, as torch keeps it)."""
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    torch.backends.cudnn.allow_tf32 = enabled


def on_host(model: M) -> M:
    """``model`` if it is on the CPU, else a CPU copy (exports and their checks run there)."""
    if all(p.device.type == "cpu" for p in model.parameters()):
        return model
    return copy.deepcopy(model).cpu()
