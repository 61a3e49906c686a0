"""What a search prints while it runs: phase headings, one line per epoch, phase results.

Progress bars (tqdm, on stderr) show the current epoch and vanish when it ends; this module
prints what stays (on stdout): a heading when a phase starts, a one-line record per epoch
(loss, train and val top-1, the strategy's own figures, time, ETA of the phase) and the
result of each step of the flow. With ``bars=False`` (``--no-progress``) only these lines
are printed, with no carriage returns, so a CI log reads like the console. Torch-free; only
rank 0 prints under ``torchrun``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

SHOWN_FIRST = ("train_loss", "train_top1", "val_top1")
HIDDEN = {"val_loss"}
WIDTH = 78


def is_rank_zero() -> bool:
    """Rank 0 of a ``torchrun`` job (which sets RANK), or a plain process."""
    return os.environ.get("RANK", "0") == "0"


def duration(seconds: float) -> str:
    """``75.2`` -> ``'1:15'``; ``3725`` -> ``'1:02:05'``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_metric(key: str, value: float) -> str:
    """One ``name value`` cell: accuracies and MACs ratios in %, counts as integers."""
    if key.endswith("top1") or (key.endswith(("macs", "macs_ratio")) and abs(value) <= 2):
        return f"{key} {100 * value:.1f}%"  # MACs figures of strategies are shares of dense
    if key.endswith("macs"):
        return f"{key} {value / 1e6:.4g}M"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{key} {int(value)}"
    return f"{key} {value:.4g}"


class Console:
    """Headings, epoch records and results for a person (``bars=True``) or a log.

    It is an epoch listener (``trainer.listeners``) and the trainer's ``console``: the
    trainer calls :meth:`phase_start` when a phase begins, so every phase of every strategy
    gets its heading without the strategy printing anything.
    """

    def __init__(self, bars: bool = True, stream: TextIO | None = None) -> None:
        self.bars = bars
        self.stream = stream
        self.enabled = is_rank_zero()
        self.labels: dict[str, str] = {"dense": "dense training"}
        self._phase: str | None = None
        self._started = 0.0
        self._last = 0.0
        self._first_epoch = 0

    @classmethod
    def silent(cls) -> Console:
        """A console that prints nothing (library calls with ``progress=False``)."""
        console = cls(bars=False)
        console.enabled = False
        return console

    # ------------------------------------------------------------------ output
    def write(self, text: str = "") -> None:
        """One or more plain lines, flushed at once (a log must not lag the work)."""
        if self.enabled:
            stream = self.stream if self.stream is not None else sys.stdout
            print(text, file=stream, flush=True)

    def heading(self, text: str) -> None:
        """A phase of the flow begins: ``== text ======``."""
        self.write(f"\n== {text} " + "=" * max(3, WIDTH - len(text) - 4))

    def info(self, text: str) -> None:
        """A result of the current phase, indented under its heading."""
        self.write(f"   {text}")

    def block(self, rows: Mapping[str, Any], title: str = "") -> None:
        """Aligned ``key  value`` rows (the plan a command prints before it works)."""
        if title:
            self.write(title)
        width = max((len(k) for k in rows), default=0)
        for key, value in rows.items():
            self.write(f"   {key:{width}s}  {value}")

    # ------------------------------------------------------------------ training
    def label(self, phase: str, text: str) -> None:
        """Name a trainer phase for its heading (e.g. the strategy's fine-tune phase)."""
        self.labels[phase] = text

    def phase_start(
        self, phase: str, epochs: int, steps: int, batch_size: int, done: int = 0
    ) -> None:
        """The trainer begins (or resumes) ``phase``: its heading."""
        self._phase, self._first_epoch = phase, done
        self._started = self._last = time.perf_counter()
        label = self.labels.get(phase, f"search phase {phase}")
        label = label if phase in label else f"{label} ({phase})"
        self.heading(f"{label}: {epochs} epochs x {steps} steps, batch {batch_size}")
        if done >= epochs > 0:
            self.info(f"finished earlier: its checkpoint is loaded ({epochs}/{epochs} epochs)")
        elif done:
            self.info(f"resuming from its checkpoint after epoch {done}/{epochs}")

    def __call__(self, event: Any) -> None:
        """Epoch listener: one line that stays, e.g.
        ``dense  3/25  train_loss 1.23  train_top1 61.2%  val_top1 64.0%  1.4s  eta 0:31``."""
        now = time.perf_counter()
        if event.phase != self._phase:  # a phase the trainer did not announce (no console)
            self._phase, self._first_epoch, self._started = event.phase, event.epoch - 1, now
            self._last = now
        took, self._last = now - self._last, now
        run = max(1, event.epoch - self._first_epoch)
        left = (now - self._started) / run * (event.epochs - event.epoch)
        metrics = event.metrics
        keys = [k for k in SHOWN_FIRST if k in metrics]
        keys += [k for k in metrics if k not in SHOWN_FIRST and k not in HIDDEN]
        cells = [format_metric(k, float(metrics[k])) for k in keys]
        width = len(str(event.epochs))
        head = f"{event.phase} {event.epoch:{width}d}/{event.epochs}"
        tail = f"{took:.1f}s" + (f"  eta {duration(left)}" if event.epoch < event.epochs else "")
        self.write("   " + "  ".join([head, *cells, tail]))
