"""Slice a ViT by a subnet into a physically smaller model (its files: ``model_files``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from automl_hiap import layout
from automl_hiap.models import ModelSpec
from automl_hiap.pruned_vit import PrunedAttention, PrunedBlock, PrunedMlp, group_heads
from automl_hiap.space import LayerShape, Unit
from automl_hiap.subnet import LayerKeep, Subnet


def build_blocks(model: nn.Module, subnet: Subnet) -> list[PrunedBlock]:
    """Pruned blocks shaped by ``subnet``; weights are fresh (use :func:`slice_subnet` to copy)."""
    blocks = []
    for block, layer in zip(layout.blocks(model), subnet.layers, strict=True):
        attn = mlp = None
        if layer.has_attn:
            groups, _ = group_heads([(len(h.qk), len(h.v)) for h in layer.heads])
            attn = PrunedAttention(
                dim=block.attn.proj.out_features,
                groups=groups,
                scale=float(block.attn.scale),
                in_index=layer.attn_in,
                qkv_bias=block.attn.qkv.bias is not None,
                proj_bias=block.attn.proj.bias is not None,
            )
        if layer.has_mlp:
            mlp = PrunedMlp(
                dim=block.mlp.fc2.out_features,
                hidden=len(layer.neurons),
                act=copy.deepcopy(block.mlp.act),
                in_index=layer.mlp_in,
                bias=block.mlp.fc1.bias is not None,
            )
        blocks.append(
            PrunedBlock(
                norm1=copy.deepcopy(block.norm1) if attn else None,
                attn=attn,
                ls1=copy.deepcopy(block.ls1) if attn else None,
                norm2=copy.deepcopy(block.norm2) if mlp else None,
                mlp=mlp,
                ls2=copy.deepcopy(block.ls2) if mlp else None,
                drop_path1=copy.deepcopy(block.drop_path1),
                drop_path2=copy.deepcopy(block.drop_path2),
            )
        )
    return blocks


def _slice_pair(
    producer: nn.Linear,
    consumer: nn.Linear,
    new_producer: nn.Linear,
    new_consumer: nn.Linear,
    rows: list[int],
    columns: list[int],
    input_columns: list[int] | None,
) -> None:
    """Copy a coupled pair: the producer keeps ``rows`` (+ bias; ``input_columns`` of its
    input if given), the consumer keeps the input ``columns`` they feed (bias untouched)."""
    weight = producer.weight[rows]
    if input_columns is not None:
        weight = weight[:, input_columns]
    new_producer.weight.copy_(weight)
    if producer.bias is not None:
        new_producer.bias.copy_(producer.bias[rows])
    new_consumer.weight.copy_(consumer.weight[:, columns])
    if consumer.bias is not None:
        new_consumer.bias.copy_(consumer.bias)


def _inputs(
    shape: LayerShape, unit: Unit, name: str, kept: tuple[int, ...] | None
) -> list[int] | None:
    return None if kept is None else layout.indices(shape, unit, name, layout.COLUMNS, kept)


@torch.no_grad()
def _copy_weights(block: Any, pruned: Any, layer: LayerKeep, shape: LayerShape) -> None:
    if pruned.attn is not None:
        _, order = group_heads([(len(h.qk), len(h.v)) for h in layer.heads])
        heads = [layer.heads[i] for i in order]  # the order PrunedAttention expects
        qk = [(h.index, j) for h in heads for j in h.qk]
        v = [(h.index, j) for h in heads for j in h.v]
        rows = layout.indices(shape, Unit.QK_DIM, "qkv", layout.ROWS, qk)
        rows += layout.indices(shape, Unit.V_DIM, "qkv", layout.ROWS, v)
        _slice_pair(
            layout.linear(block, "qkv"),
            layout.linear(block, "proj"),
            pruned.attn.qkv,
            pruned.attn.proj,
            rows,
            layout.indices(shape, Unit.V_DIM, "proj", layout.COLUMNS, v),
            _inputs(shape, Unit.ATTN_IN, "qkv", layer.attn_in),
        )
    if pruned.mlp is not None:
        _slice_pair(
            layout.linear(block, "fc1"),
            layout.linear(block, "fc2"),
            pruned.mlp.fc1,
            pruned.mlp.fc2,
            layout.indices(shape, Unit.NEURON, "fc1", layout.ROWS, layer.neurons),
            layout.indices(shape, Unit.NEURON, "fc2", layout.COLUMNS, layer.neurons),
            _inputs(shape, Unit.MLP_IN, "fc1", layer.mlp_in),
        )


def slice_subnet(model: nn.Module, subnet: Subnet, spec: ModelSpec) -> nn.Module:
    """A physically pruned copy of ``model`` (the original is not modified).

    The result is timm's model class with :class:`PrunedBlock` blocks; ``.subnet`` and
    ``.model_spec`` are attached so it can be saved. Remove masks before slicing: the
    copy is sliced from the raw weights.
    """
    dense_blocks = model.blocks
    pruned_blocks = build_blocks(model, subnet)
    for i, (block, pruned, layer) in enumerate(
        zip(layout.blocks(model), pruned_blocks, subnet.layers, strict=True)
    ):
        _copy_weights(block, pruned, layer, layout.block_shape(block, i))
    model.blocks = nn.Sequential()  # don't deep-copy the dense blocks
    try:
        result: Any = copy.deepcopy(model)
    finally:
        model.blocks = dense_blocks
    result.blocks = nn.Sequential(*pruned_blocks)
    result.subnet = subnet
    result.model_spec = spec
    return result.train(model.training)
