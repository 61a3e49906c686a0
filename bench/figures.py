"""The one figure layout the benchmark plots share: a 7 × 4.5 in panel, drawn without a display
(Agg), labelled, gridded, saved at 120 dpi."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def panel() -> tuple[Any, Any]:
    """A figure and its one axes, on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def save(fig: Any, ax: Any, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    """Label, grid and legend the axes, write the figure to ``path`` and close it."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
