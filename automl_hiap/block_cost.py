"""MACs and parameters of one block from its keep values, and the independent count they are
held to (the convention and formulas: ``cost``'s docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from automl_hiap.errors import UserError
from automl_hiap.keeps import BlockKeep, LayerShape
from automl_hiap.units import Unit

Count = TypeVar("Count", int, Tensor)


def _total(count: Count) -> Count:
    return count.sum() if isinstance(count, Tensor) else count


def count_macs(
    tokens: int,
    embed_dim: int,
    qk: Count,
    v: Count,
    neurons: Count,
    attn_in: Count,
    mlp_in: Count,
) -> Count:
    """The block formula above from kept counts: ``qk`` / ``v`` are the kept q/k and v dims,
    per head (a tensor, summed here) or in total; ints give exact integers, tensors expected
    values. Every MACs figure of the package (cost model, greedy selection, HiAP's repair
    prices) comes from here."""
    n, d = tokens, embed_dim
    return (
        n * attn_in * _total(2 * qk + v)
        + n * n * _total(qk + v)
        + n * d * _total(v)
        + n * mlp_in * neurons
        + n * neurons * d
    )


def block_macs(shape: LayerShape, tokens: int, keep: BlockKeep) -> Tensor:
    """MACs (or expected MACs) of one block."""
    k = keep.effective(shape)
    a, b = k.qk.sum(-1), k.v.sum(-1)  # kept q/k and v dims per head
    return count_macs(
        tokens, shape.embed_dim, a, b, k.neuron.sum(), k.attn_in.sum(), k.mlp_in.sum()
    )


def unit_macs(shape: LayerShape, tokens: int, unit: Unit) -> int:
    """MACs that removing one unit of this kind saves from the otherwise dense block (a
    branch: all of it), e.g. a v dim's qkv row, its AV column and its proj column."""
    d, hd, dims = shape.embed_dim, shape.head_dim, shape.num_heads * shape.head_dim
    dense = dict(qk=dims, v=dims, neurons=shape.mlp_hidden, attn_in=d, mlp_in=d)
    fewer = {
        Unit.ATTN_BLOCK: dict(qk=0, v=0),
        Unit.HEAD: dict(qk=dims - hd, v=dims - hd),
        Unit.FFN_BLOCK: dict(neurons=0),
        Unit.QK_DIM: dict(qk=dims - 1),
        Unit.V_DIM: dict(v=dims - 1),
        Unit.NEURON: dict(neurons=shape.mlp_hidden - 1),
        Unit.ATTN_IN: dict(attn_in=d - 1),
        Unit.MLP_IN: dict(mlp_in=d - 1),
    }[unit]
    return count_macs(tokens, d, **dense) - count_macs(tokens, d, **(dense | fewer))


def block_params(shape: LayerShape, keep: BlockKeep) -> Tensor:
    """Parameters (or expected parameters) of one block."""
    k = keep.effective(shape)
    a, b = k.qk.sum(-1), k.v.sum(-1)
    qkv_rows = (2 * a + b).sum()
    neurons = k.neuron.sum()
    # a branch exists while any of its units does: P = gate · (1 − Π(1 − p_unit))
    attn_alive = k.attn * (1 - torch.prod(1 - k.head))
    mlp_alive = k.ffn * (1 - torch.prod(1 - k.neuron))
    return (
        k.attn_in.sum() * qkv_rows
        + qkv_rows * float(shape.qkv_bias)
        + shape.embed_dim * b.sum()
        + attn_alive * shape.attn_fixed_params
        + k.mlp_in.sum() * neurons
        + neurons * float(shape.fc1_bias)
        + neurons * shape.embed_dim
        + mlp_alive * shape.mlp_fixed_params
    )


@dataclass(frozen=True)
class Traced:
    """MACs of one forward as ``FlopCounterMode`` counts them: in all, and per block."""

    total: int
    blocks: tuple[int, ...]


def traced_macs(model: nn.Module, label: str = "model") -> Traced:
    """Count one eval-mode forward of a one-image batch at the model's input size, on the meta
    device: shapes only, so no weights are read and a large model costs no compute. Meta
    tensors take SDPA's explicit path, so attention matmuls are counted wherever they are."""
    patch_embed: Any = getattr(model, "patch_embed", None)
    size = getattr(patch_embed, "img_size", None)
    convs = [m for m in patch_embed.modules() if isinstance(m, nn.Conv2d)] if patch_embed else []
    if not (isinstance(size, tuple) and len(size) == 2 and convs):
        raise UserError(f"unsupported model {label}: no fixed input size (patch_embed.img_size)")
    image = torch.empty(1, convs[0].in_channels, *size, device="meta", dtype=convs[0].weight.dtype)
    # fresh meta tensors that need no gradient: the counter's module tracker then hooks no
    # autograd, whatever the caller's grad mode (no_grad, inference_mode) or the model's device
    state = {
        name: torch.empty_like(tensor, device="meta", requires_grad=False)
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
    }
    modes = [(m, m.training) for m in model.modules()]
    model.eval()  # the exported model's cost: no token dropout
    try:
        with FlopCounterMode(display=False) as counter:
            functional_call(model, state, (image,))
    except Exception as exc:  # any model code may fail on meta tensors: name it, in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(
            f"unsupported model {label}: its forward cannot be traced on the meta device to "
            f"count its MACs ({type(exc).__name__}: {reason})"
        ) from None
    finally:
        for module, training in modes:
            module.training = training
    counts = counter.get_flop_counts()
    root = type(model).__name__
    depth = len(model.blocks)  # type: ignore[arg-type]
    per_block = (sum(counts.get(f"{root}.blocks.{i}", {}).values()) // 2 for i in range(depth))
    return Traced(total=counter.get_total_flops() // 2, blocks=tuple(per_block))
