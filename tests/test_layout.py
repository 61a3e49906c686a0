"""The layout table: timm's fused-qkv indices written out by hand, energies and reductions
computed weight by weight, masks and gates that touch exactly what a unit owns."""

from __future__ import annotations

import pytest
import torch

import automl_hiap as ah
from automl_hiap import layout
from automl_hiap.layout import COLUMNS, ROWS
from automl_hiap.space import BlockKeep, Unit

from .conftest import tiny_spec

H, D_HEAD, WIDTH, HIDDEN = 3, 8, 24, 48  # tiny_spec(embed_dim=24, num_heads=3), mlp_ratio 2


@pytest.fixture
def block() -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_spec(depth=1, embed_dim=WIDTH, num_heads=H).create()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # biases too, so their ownership is visible
    return model.blocks[0]


def test_the_shape_is_read_from_the_block(block) -> None:
    shape = layout.block_shape(block)
    assert (shape.num_heads, shape.head_dim, shape.embed_dim, shape.mlp_hidden) == (
        H,
        D_HEAD,
        WIDTH,
        HIDDEN,
    )


def test_indices_are_timms_fused_qkv_rows_and_the_proj_fc_columns(block) -> None:
    shape = layout.block_shape(block)
    hd = H * D_HEAD
    pairs = [(2, 5), (0, 1), (1, 7)]  # unordered on purpose: the given order is kept
    # row = part·(H·d) + head·d + j, part 0/1/2 = q/k/v
    q = [h * D_HEAD + j for h, j in pairs]
    assert layout.indices(shape, Unit.QK_DIM, "qkv", ROWS, pairs) == q + [hd + r for r in q]
    assert layout.indices(shape, Unit.V_DIM, "qkv", ROWS, pairs) == [2 * hd + r for r in q]
    assert layout.indices(shape, Unit.V_DIM, "proj", COLUMNS, pairs) == q
    assert layout.indices(shape, Unit.QK_DIM, "proj", COLUMNS, pairs) == []  # not owned
    # flat positions in the keep tensor mean the same units
    assert layout.indices(shape, Unit.V_DIM, "proj", COLUMNS, q) == q
    head_rows = layout.indices(shape, Unit.HEAD, "qkv", ROWS, [1])
    assert head_rows == [p * hd + D_HEAD + j for p in range(3) for j in range(D_HEAD)]
    assert layout.indices(shape, Unit.HEAD, "proj", COLUMNS, [2]) == list(range(16, 24))
    neurons = [40, 3, 17]
    assert layout.indices(shape, Unit.NEURON, "fc1", ROWS, neurons) == neurons
    assert layout.indices(shape, Unit.NEURON, "fc2", COLUMNS, neurons) == neurons
    assert layout.indices(shape, Unit.ATTN_IN, "qkv", COLUMNS, [4, 9]) == [4, 9]
    assert layout.indices(shape, Unit.MLP_IN, "fc1", COLUMNS) == list(range(WIDTH))
    assert layout.indices(shape, Unit.MLP_IN, "qkv", COLUMNS) == []


def test_energy_sums_the_squares_of_every_owned_weight_and_bias(block) -> None:
    shape = layout.block_shape(block)
    units = [Unit.HEAD, Unit.QK_DIM, Unit.V_DIM, Unit.NEURON, Unit.ATTN_IN, Unit.MLP_IN]
    energy = layout.energy(shape, layout.block_tensors(block), units)
    w = {key: t.detach().double() for key, t in layout.block_tensors(block).items()}
    qkv_w, qkv_b, proj_w = w["qkv_w"], w["qkv_b"], w["proj_w"]
    fc1_w, fc1_b, fc2_w = w["fc1_w"], w["fc1_b"], w["fc2_w"]
    hd = H * D_HEAD

    def row(w, b, r):  # one row with its bias entry
        return float(w[r].square().sum() + b[r].square())

    for h in range(H):
        for j in range(D_HEAD):
            r = h * D_HEAD + j
            qk = row(qkv_w, qkv_b, r) + row(qkv_w, qkv_b, hd + r)
            v = row(qkv_w, qkv_b, 2 * hd + r) + float(proj_w[:, r].square().sum())
            assert float(energy[Unit.QK_DIM][h, j]) == pytest.approx(qk, rel=1e-12)
            assert float(energy[Unit.V_DIM][h, j]) == pytest.approx(v, rel=1e-12)
        head = float(energy[Unit.QK_DIM][h].sum() + energy[Unit.V_DIM][h].sum())
        assert float(energy[Unit.HEAD][h]) == pytest.approx(head, rel=1e-12)
    for k in range(HIDDEN):
        neuron = row(fc1_w, fc1_b, k) + float(fc2_w[:, k].square().sum())
        assert float(energy[Unit.NEURON][k]) == pytest.approx(neuron, rel=1e-12)
    for c in range(WIDTH):
        assert float(energy[Unit.ATTN_IN][c]) == pytest.approx(float(qkv_w[:, c].square().sum()))
        assert float(energy[Unit.MLP_IN][c]) == pytest.approx(float(fc1_w[:, c].square().sum()))
    assert energy[Unit.QK_DIM].shape == (H, D_HEAD) and energy[Unit.HEAD].shape == (H,)


def test_per_unit_reduces_any_per_weight_tensor_slice_by_slice(block) -> None:
    shape = layout.block_shape(block)
    grads = {
        "qkv_w": torch.randn(3 * H * D_HEAD, WIDTH, dtype=torch.float64),
        "proj_w": torch.randn(WIDTH, H * D_HEAD, dtype=torch.float64),
    }

    def biggest(t: torch.Tensor, axis: int) -> torch.Tensor:
        return t.abs().amax(axis)

    parts = layout.per_unit(shape, grads, [Unit.QK_DIM, Unit.V_DIM], biggest)
    (q, k), (v_row, v_column) = parts[Unit.QK_DIM], parts[Unit.V_DIM]
    hd = H * D_HEAD
    h, j = 1, 6
    r = h * D_HEAD + j
    assert float(q[h, j]) == float(grads["qkv_w"][r].abs().max())
    assert float(k[h, j]) == float(grads["qkv_w"][hd + r].abs().max())
    assert float(v_row[h, j]) == float(grads["qkv_w"][2 * hd + r].abs().max())
    assert float(v_column[h, j]) == float(grads["proj_w"][:, r].abs().max())
    # rows only: the proj column is skipped; an absent weight is skipped too
    rows_only = layout.per_unit(shape, grads, [Unit.V_DIM, Unit.NEURON], biggest, axis=ROWS)
    assert len(rows_only[Unit.V_DIM]) == 1 and rows_only[Unit.NEURON] == []


def test_weight_counts_are_the_weights_one_unit_owns(block) -> None:
    shape = layout.block_shape(block)
    assert layout.weight_count(shape, Unit.QK_DIM) == 2 * WIDTH
    assert layout.weight_count(shape, Unit.V_DIM) == WIDTH + WIDTH
    assert layout.weight_count(shape, Unit.NEURON) == WIDTH + WIDTH
    assert layout.weight_count(shape, Unit.ATTN_IN) == 3 * H * D_HEAD
    assert layout.weight_count(shape, Unit.MLP_IN) == HIDDEN
    assert layout.weight_count(shape, Unit.HEAD) == D_HEAD * 4 * WIDTH


def test_weight_masks_zero_exactly_what_a_closed_unit_owns(block) -> None:
    shape = layout.block_shape(block)
    keep = BlockKeep().filled(shape, like=torch.ones((), dtype=torch.float64))
    keep.v[2, 3] = 0.0
    keep.neuron[11] = 0.0
    masks = layout.weight_masks(shape, keep)
    hd, r = H * D_HEAD, 2 * D_HEAD + 3
    zeros = {key: (m == 0).nonzero().tolist() for key, m in masks.items()}
    assert zeros["qkv_w"] == [[2 * hd + r, c] for c in range(WIDTH)]
    assert zeros["qkv_b"] == [[2 * hd + r]]
    assert zeros["proj_w"] == [[e, r] for e in range(WIDTH)]
    assert zeros["fc1_w"] == [[11, c] for c in range(WIDTH)] and zeros["fc1_b"] == [[11]]
    assert zeros["fc2_w"] == [[e, 11] for e in range(WIDTH)]
    assert zeros["proj_b"] == [] and zeros["fc2_b"] == []
    for key, (path, name) in layout.TENSORS.items():  # every tensor, its own shape
        assert masks[key].shape == getattr(block.get_submodule(path), name).shape
    closed = BlockKeep(attn=torch.zeros((), dtype=torch.float64)).effective(shape)
    branch = layout.weight_masks(shape, closed)
    assert not branch["proj_b"].any() and not branch["qkv_w"].any()
    assert branch["fc2_b"].all()


def test_gates_act_once_where_the_masks_need_them(block) -> None:
    shape = layout.block_shape(block)
    gen = torch.Generator().manual_seed(0)
    qk, v = torch.rand(H, D_HEAD, generator=gen), torch.rand(H, D_HEAD, generator=gen)
    head = torch.rand(H, generator=gen)
    keep = BlockKeep(qk=qk, v=v, head=head)
    q_rows = layout.gate(shape, keep, "qkv", ROWS)
    assert q_rows is not None
    assert torch.equal(q_rows, torch.cat([qk.flatten(), torch.ones(2 * H * D_HEAD)]))
    proj = layout.gate(shape, keep, "proj", COLUMNS)
    assert proj is not None and torch.equal(proj, (head[:, None] * v).flatten())
    assert layout.gate(shape, keep, "fc2", COLUMNS) is None  # no neuron gate given
    branch = layout.gate(shape, BlockKeep(ffn=torch.tensor(0.5)), "fc2", ROWS)
    assert branch is not None and branch.dim() == 0
    assert set(layout.gated_axes()) == {
        ("qkv", COLUMNS),
        ("qkv", ROWS),
        ("proj", COLUMNS),
        ("proj", ROWS),
        ("fc1", COLUMNS),
        ("fc2", COLUMNS),
        ("fc2", ROWS),
    }


@pytest.mark.parametrize("unit", list(layout.OWNED))
def test_expand_and_unit_view_are_inverse_on_every_owned_slice(block, unit: Unit) -> None:
    shape = layout.block_shape(block)
    values = torch.rand(layout.unit_shape(shape, unit), dtype=torch.float64)
    for where in layout.OWNED[unit]:
        vector = layout.expand(shape, unit, where, values, fill=-1.0)
        assert vector.numel() == layout.axis_length(shape, where.linear, where.axis)
        owned = layout.indices(shape, unit, where.linear, where.axis)
        assert (vector[[i for i in range(vector.numel()) if i not in owned]] == -1).all()
        view = layout.unit_view(shape, unit, where, vector[None, :], 1)[0]
        back = view[..., 0] if unit == Unit.HEAD else view  # a head: d equal entries
        assert torch.equal(back, values)


def test_masked_model_uses_the_table(tiny) -> None:
    """A zero gate on one v dim equals zeroing the weights the table says it owns."""
    _, model, space = tiny
    shape = space.layers[0]
    keep = BlockKeep(v=torch.ones(shape.num_heads, shape.head_dim))
    keep.v[1, 2] = 0.0  # type: ignore[index]
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), ah.Masks(model, space, [keep, BlockKeep()]):
        masked = model(x)
    mask = layout.weight_masks(shape, keep.effective(shape))
    with torch.no_grad():
        for key, t in layout.block_tensors(model.blocks[0]).items():
            t.mul_(mask[key].to(t))
        assert (model(x) - masked).abs().max() <= 1e-5
