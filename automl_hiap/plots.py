"""Pictures of a subnet's structure (matplotlib, headless).

``structure.png`` answers, at a glance, the questions a person has about a pruned model:
which run it is (space file, strategy, budget), how much compute is left (% of dense), where
in the network the compute went (per-layer MACs, attention and FFN, against the dense
model), and what was kept in each layer (heads, q/k and v dims, neurons, as fractions with
the counts written on the bars).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from automl_hiap.atomic import atomic_path
from automl_hiap.budget import format_macs
from automl_hiap.cost import count_macs
from automl_hiap.space import LayerShape, SearchSpace
from automl_hiap.subnet import LayerKeep, Subnet

KINDS = ("heads", "q/k dims", "v dims", "FFN neurons")
COLORS = ("tab:blue", "tab:cyan", "tab:green", "tab:orange")


@dataclass(frozen=True)
class LayerMacs:
    """One block's MACs, split into its two branches."""

    attn: int
    ffn: int


def layer_macs(shape: LayerShape, tokens: int, layer: LayerKeep | None) -> LayerMacs:
    """Attention and FFN MACs of one block (``None``: the dense block)."""
    d = shape.embed_dim
    if layer is None:
        qk = v = shape.num_heads * shape.head_dim
        neurons, attn_in, mlp_in = shape.mlp_hidden, d, d
    else:
        qk = sum(len(h.qk) for h in layer.heads)
        v = sum(len(h.v) for h in layer.heads)
        neurons = len(layer.neurons)
        attn_in = d if layer.attn_in is None else len(layer.attn_in)
        mlp_in = d if layer.mlp_in is None else len(layer.mlp_in)
    attn = count_macs(tokens, d, qk, v, 0, attn_in, mlp_in)
    return LayerMacs(attn=attn, ffn=count_macs(tokens, d, 0, 0, neurons, attn_in, mlp_in))


def describe_model(space: SearchSpace, image_size: int | None = None) -> str:
    """The model as its shapes say it is (a timm name can be a base that kwargs resized)."""
    first = space.layers[0]
    size = f", {image_size} px" if image_size else ""
    return (
        f"{space.depth}-layer ViT, width {first.embed_dim}, {first.num_heads} heads, "
        f"{space.tokens} tokens{size}"
    )


def structure_title(
    *,
    source: str,
    strategy: str,
    budget: str | None,
    macs: float,
    dense_macs: float,
    model: str,
) -> str:
    """Two lines: which run (space file, strategy, budget), and what it left (% of dense)."""
    run = " · ".join(p for p in (source, strategy, f"budget {budget}" if budget else "") if p)
    share = macs / dense_macs
    return (
        f"{run}\n{format_macs(macs)} MACs = {share:.1%} of dense ({format_macs(dense_macs)})"
        f" · {model}"
    )


def structure_plot(space: SearchSpace, subnet: Subnet, path: str | Path, title: str = "") -> Path:
    """Per layer: MACs kept against dense (attention, FFN), and the kept fraction of heads,
    q/k dims, v dims and FFN neurons with their counts (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(range(space.depth))
    series: dict[str, list[float]] = {kind: [] for kind in KINDS}
    counts: dict[str, list[str]] = {kind: [] for kind in KINDS}
    dense_macs: list[LayerMacs] = []
    kept_macs: list[LayerMacs] = []
    for shape, layer in zip(space.layers, subnet.layers, strict=True):
        full_dims = shape.num_heads * shape.head_dim
        qk = sum(len(h.qk) for h in layer.heads)
        v = sum(len(h.v) for h in layer.heads)
        kept = {
            "heads": (len(layer.heads), shape.num_heads),
            "q/k dims": (qk, full_dims),
            "v dims": (v, full_dims),
            "FFN neurons": (len(layer.neurons), shape.mlp_hidden),
        }
        for kind, (n, full) in kept.items():
            series[kind].append(n / full)
            counts[kind].append(str(n))
        dense_macs.append(layer_macs(shape, space.tokens, None))
        kept_macs.append(layer_macs(shape, space.tokens, layer))

    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(max(8.5, 0.9 * space.depth + 4.5), 7.2),
        sharex=True,
        gridspec_kw={"height_ratios": [1, 1.25]},
    )
    _macs_panel(top, layers, dense_macs, kept_macs)
    width = 0.2
    for offset, (kind, color) in enumerate(zip(KINDS, COLORS, strict=True)):
        xs = [i + (offset - 1.5) * width for i in layers]
        bars = bottom.bar(xs, series[kind], width, label=kind, color=color)
        bottom.bar_label(bars, labels=counts[kind], fontsize=6, padding=1)
    for i, layer in enumerate(subnet.layers):  # a removed branch is an absence: say so
        branches = (("attention", not layer.heads), ("FFN", not layer.neurons))
        gone = [name for name, empty in branches if empty]
        if gone:
            bottom.text(i, 0.5, "\n".join(f"{g} removed" for g in gone), ha="center", fontsize=7)
    bottom.set_xticks(layers)
    bottom.set_xlabel("layer")
    bottom.set_ylabel("kept fraction (count on bar)")
    bottom.set_ylim(0, 1.15)
    bottom.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title or "kept structure per layer", fontsize=10)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as temporary:
        fig.savefig(temporary, dpi=120)
    plt.close(fig)
    return out


def _macs_panel(ax: Any, layers: list[int], dense: list[LayerMacs], kept: list[LayerMacs]) -> None:
    """Per-layer MACs: the dense block as an outline, the kept attention + FFN stacked in it."""
    scale = 1e6
    ax.bar(
        layers,
        [(d.attn + d.ffn) / scale for d in dense],
        0.7,
        facecolor="none",
        edgecolor="tab:gray",
        linestyle="--",
        label="dense block",
    )
    attn = [k.attn / scale for k in kept]
    ffn = [k.ffn / scale for k in kept]
    ax.bar(layers, attn, 0.5, color="tab:blue", label="attention kept")
    ax.bar(layers, ffn, 0.5, bottom=attn, color="tab:orange", label="FFN kept")
    for i, (d, k) in enumerate(zip(dense, kept, strict=True)):
        share = (k.attn + k.ffn) / max(1, d.attn + d.ffn)
        ax.text(i, (d.attn + d.ffn) / scale, f"{share:.0%}", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("MACs per layer (M)")
    top = max((d.attn + d.ffn) / scale for d in dense)
    ax.set_ylim(0, top * 1.18)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
