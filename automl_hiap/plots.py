"""Pictures of a subnet's structure (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from automl_hiap.space import SearchSpace
from automl_hiap.subnet import Subnet


def structure_plot(space: SearchSpace, subnet: Subnet, path: str | Path, title: str = "") -> Path:
    """Per layer: kept fraction of heads, q/k dims, v dims and FFN neurons (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = range(space.depth)
    series: dict[str, list[float]] = {"heads": [], "q/k dims": [], "v dims": [], "FFN neurons": []}
    for shape, layer in zip(space.layers, subnet.layers, strict=True):
        full_dims = shape.num_heads * shape.head_dim
        series["heads"].append(len(layer.heads) / shape.num_heads)
        series["q/k dims"].append(sum(len(h.qk) for h in layer.heads) / full_dims)
        series["v dims"].append(sum(len(h.v) for h in layer.heads) / full_dims)
        series["FFN neurons"].append(len(layer.neurons) / shape.mlp_hidden)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * space.depth + 2), 3.6))
    width = 0.2
    for offset, (label, values) in enumerate(series.items()):
        ax.bar([i + (offset - 1.5) * width for i in layers], values, width, label=label)
    ax.set_xticks(list(layers))
    ax.set_xlabel("layer")
    ax.set_ylabel("kept fraction")
    ax.set_ylim(0, 1.05)
    ax.set_title(title or "kept structure per layer")
    ax.legend(ncols=4, fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
