"""Peer baseline: Torch-Pruning's MetaPruner on the same timm ViT, to a MACs budget.

Follows Torch-Pruning's own timm ViT example (``examples/transformers/prune_timm_vit.py``):
group importance (``magnitude`` = Group-L2, ``taylor`` = Group-Taylor from the gradients of a
few training batches), ``num_heads={qkv: H}`` so attention is pruned head-consistently, the
classifier ignored, and ``num_heads`` / ``head_dim`` written back into every timm
``Attention`` after each step. As in its "bottleneck" mode the residual width stays (every
``proj`` and ``fc2`` output is ignored), so Torch-Pruning prunes what this project's space
prunes: attention dims (uniformly across the heads of a layer) or whole heads
(``prune_heads``), and FFN neurons.

Torch-Pruning takes a channel ratio, not a budget. Its ViT example prunes in one step at a
given ratio; here that ratio is bisected to the smallest one whose MACs — counted with this
project's convention (``automl_hiap.cost``: every Linear, the patch conv, both attention
matmuls) — are at or below the target, each trial pruning a fresh copy of the dense model.
(Iterative steps with local head pruning remove ``ceil(ratio · current heads)`` heads per
step in Torch-Pruning 1.6, which empties layers, so one-shot it is.)

Smoke test: ``python bench/peer_torch_pruning.py`` (a tiny ViT, both importances).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import automl_hiap as ah


def count_macs(model: nn.Module) -> int:
    """MACs of a (possibly pruned) timm ViT under ``automl_hiap.cost``'s convention."""
    return ah.dense_cost(ah.SearchSpace.from_model(model)).macs


def _attention_modules(model: nn.Module) -> list[Any]:
    return [block.attn for block in model.blocks]  # type: ignore[union-attr]


def _prune_once(
    dense: nn.Module,
    example_inputs: Tensor,
    ratio: float,
    importance: str,
    batches: list[tuple[Tensor, Tensor]],
    prune_heads: bool,
    global_pruning: bool,
) -> nn.Module:
    """One Torch-Pruning step at ``ratio`` on a copy of ``dense``, as its ViT example runs."""
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    attentions = _attention_modules(model)
    min_heads = min(attn.num_heads for attn in attentions)
    ignored: list[nn.Module] = [model.get_classifier(), model.patch_embed]  # type: ignore[list-item, operator]
    for block in model.blocks:  # type: ignore[union-attr]
        ignored += [block.attn.proj, block.mlp.fc2]  # keep the residual width
    scorer = (
        tp.importance.GroupTaylorImportance()
        if importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    pruner = tp.pruner.MetaPruner(
        model,
        example_inputs,
        importance=scorer,
        global_pruning=global_pruning,
        pruning_ratio=ratio,
        ignored_layers=ignored,
        num_heads={attn.qkv: attn.num_heads for attn in attentions},
        prune_num_heads=prune_heads,
        prune_head_dims=not prune_heads,
        # it removes ceil(ratio · H) heads per layer: keep at least one
        head_pruning_ratio=min(ratio, 1 - 1 / min_heads) if prune_heads else 0.0,
    )
    if importance == "taylor":
        device = example_inputs.device
        model.zero_grad()
        for images, labels in batches:
            F.cross_entropy(model(images.to(device)), labels.to(device)).backward()
    pruner.step()
    for attn in attentions:  # Torch-Pruning cannot know these attributes
        attn.num_heads = pruner.num_heads[attn.qkv]
        attn.head_dim = attn.qkv.out_features // (3 * attn.num_heads)
        attn.attn_dim = attn.num_heads * attn.head_dim
    model.zero_grad(set_to_none=True)
    return model


def prune_with_torch_pruning(
    model: nn.Module,
    example_inputs: Tensor,
    target_macs: float,
    importance: Literal["magnitude", "taylor"] = "magnitude",
    taylor_batches: Iterable[tuple[Tensor, Tensor]] | None = None,
    prune_heads: bool = False,
    global_pruning: bool = False,
    max_ratio: float = 0.95,
    iterations: int = 12,
) -> nn.Module:
    """A Torch-Pruning-pruned copy of ``model`` with MACs <= ``target_macs`` (the largest such
    model its ratio knob gives, found by bisection over the ratio; ``model`` is unchanged).

    ``taylor_batches``: (images, labels) batches whose summed cross-entropy gradients feed the
    Taylor importance. ``prune_heads``: remove whole heads (Torch-Pruning's
    ``prune_num_heads``) instead of head dims; the FFN is pruned at the same ratio either way.
    Returns a timm VisionTransformer with smaller Linear layers; fine-tune it next.
    """
    if importance == "taylor" and taylor_batches is None:
        raise ValueError("taylor importance needs taylor_batches")
    batches = list(taylor_batches or [])
    if count_macs(model) <= target_macs:
        return copy.deepcopy(model)

    def prune(ratio: float) -> nn.Module:
        return _prune_once(
            model, example_inputs, ratio, importance, batches, prune_heads, global_pruning
        )

    best = prune(max_ratio)
    if count_macs(best) > target_macs:
        raise ValueError(
            f"Torch-Pruning reaches {count_macs(best):.4g} MACs at ratio {max_ratio}, "
            f"above the target {target_macs:.4g}"
        )
    low, high = 0.0, max_ratio
    for _ in range(iterations):
        middle = (low + high) / 2
        candidate = prune(middle)
        if count_macs(candidate) <= target_macs:
            high, best = middle, candidate
        else:
            low = middle
    return best


def _smoke() -> None:
    from automl_hiap.models import ModelSpec

    spec = ModelSpec(
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=8, depth=3, embed_dim=96, num_heads=3, num_classes=10),
    )
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    batches = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))) for _ in range(2)]
    for importance in ("magnitude", "taylor"):
        for heads in (False, True):
            model = spec.create().eval()
            dense = count_macs(model)
            pruned = prune_with_torch_pruning(
                model,
                x[:1],
                0.5 * dense,
                importance,  # type: ignore[arg-type]
                batches,
                prune_heads=heads,
            )
            out = pruned.eval()(x)
            params = sum(p.numel() for p in pruned.parameters())
            heads_left = [b.attn.num_heads for b in pruned.blocks]
            dims = [b.attn.head_dim for b in pruned.blocks]
            print(
                f"{importance:9s} heads={heads!s:5s} MACs {dense} -> {count_macs(pruned)} "
                f"({count_macs(pruned) / dense:.3f}), params {params}, heads {heads_left}, "
                f"head dims {dims}, width {pruned.pos_embed.shape[-1]}, out {tuple(out.shape)}"
            )


if __name__ == "__main__":
    _smoke()
