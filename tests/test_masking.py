"""Masks and gates on a live timm model: removable, outside the state_dict, differentiable."""

from __future__ import annotations

import torch

import automl_hiap as ah
from automl_hiap.space import BlockKeep
from automl_hiap.subnet import random_subnet


def test_state_dict_is_untouched_and_checkpoints_load_into_a_masked_model(tiny) -> None:
    spec, model, space = tiny
    keys = list(model.state_dict())
    with ah.Masks(model, space, space.dense_keep()):
        assert list(model.state_dict()) == keys
        fresh = spec.create()
        model.load_state_dict(fresh.state_dict(), strict=True)


def test_remove_restores_the_dense_function(tiny) -> None:
    _, model, space = tiny
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        dense = model(x)
        masks = ah.Masks(
            model, space, random_subnet(space, torch.Generator().manual_seed(0)).to_keep(space)
        )
        masked = model(x)
        masks.remove()
        assert not torch.allclose(masked, dense)
        assert torch.equal(model(x), dense)


def test_all_ones_gates_are_the_identity(tiny) -> None:
    _, model, space = tiny
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        dense = model(x)
        with ah.Masks(model, space, space.dense_keep()):
            assert torch.allclose(model(x), dense, atol=1e-6)


def test_closing_a_head_gate_removes_its_micro_units_output(tiny) -> None:
    _, model, space = tiny
    x = torch.randn(2, 3, 16, 16)
    shape = space.layers[0]
    closed = [BlockKeep(head=torch.tensor([0.0, 1.0])), BlockKeep()]
    varied = [
        BlockKeep(
            head=torch.tensor([0.0, 1.0]),
            v=torch.rand(shape.num_heads, shape.head_dim),
            qk=torch.rand(shape.num_heads, shape.head_dim),
        ),
        BlockKeep(),
    ]
    varied[0].v[1] = 1.0
    varied[0].qk[1] = 1.0
    with torch.no_grad(), ah.Masks(model, space, closed) as masks:
        a = model(x)
        masks.set(varied)
        assert torch.allclose(model(x), a, atol=1e-6)


def test_soft_gates_are_differentiable(tiny) -> None:
    _, model, space = tiny
    gates = [
        BlockKeep(
            **{
                f: torch.full_like(getattr(k, f), 0.7, requires_grad=True)
                for f in k.__dataclass_fields__
            }
        )
        for k in space.dense_keep()
    ]
    with ah.Masks(model, space, gates):
        model(torch.randn(2, 3, 16, 16)).square().sum().backward()
    for keep in gates:
        for name in keep.__dataclass_fields__:
            grad = getattr(keep, name).grad
            assert grad is not None and grad.abs().sum() > 0, name


def test_masked_units_get_zero_weight_gradient(tiny) -> None:
    _, model, space = tiny
    keep = BlockKeep(neuron=torch.ones(space.layers[0].mlp_hidden))
    keep.neuron[:5] = 0
    model.zero_grad()
    with ah.Masks(model, space, [keep, BlockKeep()]):
        model(torch.randn(2, 3, 16, 16)).sum().backward()
    grad = model.blocks[0].mlp.fc2.weight.grad
    assert grad[:, :5].abs().sum() == 0 and grad[:, 5:].abs().sum() > 0


def test_an_open_branch_gate_over_closed_units_equals_the_sliced_model(tiny) -> None:
    """A branch whose heads (or neurons) are all closed is gone from the slice, bias and all;
    the masked model must drop it too, whatever its own gate says."""
    spec, model, space = tiny
    shape = space.layers[0]
    for unit_closed in (
        BlockKeep(attn=torch.tensor(1.0), head=torch.zeros(shape.num_heads)),
        BlockKeep(ffn=torch.tensor(1.0), neuron=torch.zeros(shape.mlp_hidden)),
    ):
        keeps = [unit_closed, *([BlockKeep()] * (space.depth - 1))]
        subnet = ah.Subnet.from_keep(space, keeps)
        x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            for module in model.modules():  # biases that make the bug visible
                if isinstance(module, torch.nn.Linear) and module.bias is not None:
                    module.bias.normal_(0, 0.5)
            with ah.Masks(model, space, keeps):
                masked = model(x)
            sliced = ah.slice_subnet(model, subnet, spec).eval()(x)
        assert (masked - sliced).abs().max() <= 1e-5
