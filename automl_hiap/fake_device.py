"""A stand-in accelerator on the CPU, so placement bugs fail in CPU-only test runs.

A GPU run crashes at the first tensor that was left on the host (a model, a teacher, a batch,
a gate); a CPU run cannot notice, because there every tensor is on the CPU. Under
:class:`FakeAccelerator` the device ``meta`` plays the accelerator: a tensor moved there (``x.to
(device)``, ``module.to(device)``, ``torch.zeros(..., device=device)``) keeps its values in a
hidden CPU tensor and computes normally, and any op that mixes it with a host tensor of one or
more dimensions raises ``RuntimeError: Expected all tensors to be on the same device``, as CUDA
does. What CUDA allows is allowed: host scalars (0-dim tensors) in device ops, host index
tensors in advanced indexing, and copies between the two (``copy_``, ``to``, ``cpu()``).
``numpy()`` of a device tensor fails as on CUDA; ``item()``, ``tolist()``, ``float()`` work.
``torch.save`` stores a device tensor as a CPU tensor (as saving a CUDA tensor and loading it
with ``map_location="cpu"`` would).

Why ``meta`` and a mode rather than a float64 stand-in: dtype conversions (``scale.to(x.dtype)``)
would silently "move" a forgotten host tensor, and integer tensors (labels, indices) could not
be told apart at all. Every op runs through Python here, so it is for tests with tiny models.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

DEVICE = torch.device("lazy")
aten = torch.ops.aten

# ops that move data between host and device, or take host index tensors (allowed on CUDA)
_LIBRARY: list[Any] = []  # the kernels of _register_backend, kept alive
_CROSSING = {
    aten._to_copy.default,
    aten.copy_.default,
    aten._copy_from.default,
    aten._copy_from_and_resize.default,
    aten.index.Tensor,
    aten.index_put_.default,
    aten.index_put.default,
    aten._index_put_impl_.default,
    aten.lift_fresh.default,
    aten._has_compatible_shallow_copy_type.default,  # Module.to compares, moves nothing
}


class OnDevice(torch.Tensor):
    """A tensor on the stand-in accelerator: reports ``device='meta'``, holds its values in
    :attr:`host` (a CPU tensor). Created only by the mode."""

    host: Tensor  # the CPU tensor that holds the values

    @staticmethod
    def __new__(cls, inner: Tensor) -> OnDevice:
        out = torch.Tensor._make_wrapper_subclass(
            cls,
            inner.size(),
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            layout=inner.layout,
            device=DEVICE,
            requires_grad=False,
        )
        out.host = inner
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl  # type: ignore[assignment]

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
    ) -> Any:
        raise RuntimeError(f"{func}: a stand-in device tensor used outside FakeAccelerator()")

    def __repr__(self, *, tensor_contents: Any = None) -> str:  # type: ignore[override]
        return f"OnDevice({self.host!r})"

    def tolist(self) -> Any:
        return self.host.tolist()  # torch refuses tolist() on subclasses; CUDA allows it

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self.host.__reduce_ex__(protocol)  # saved as a host tensor


def _wrap(value: Any) -> Any:
    if isinstance(value, Tensor) and not isinstance(value, OnDevice):
        return OnDevice(value)
    return value


def _register_backend() -> None:
    """Kernels for the device type's own backend. Some tensors are built by torch's C++
    below the dispatcher, out of reach of the mode (``torch.tensor(data, device=...)``, list
    indices ``w[[0, 2]]``): they allocate on that backend and copy into it, so those two
    kernels make them device tensors too. Registered once, and only where the backend has
    none of its own."""
    if _LIBRARY or torch._C._dispatch_has_kernel_for_dispatch_key(
        "aten::empty.memory_format", "Lazy"
    ):
        return
    library = torch.library.Library("aten", "IMPL", "Lazy")

    def empty(
        size: Any,
        dtype: Any = None,
        layout: Any = None,
        device: Any = None,
        pin_memory: Any = None,
        memory_format: Any = None,
    ) -> Tensor:
        return OnDevice(torch.empty(size, dtype=dtype, memory_format=memory_format))

    def copy(dst: Tensor, src: Tensor, non_blocking: bool = False) -> Tensor:
        assert isinstance(dst, OnDevice)
        dst.host.copy_(src.host if isinstance(src, OnDevice) else src)
        return dst

    library.impl("empty.memory_format", empty)
    library.impl("copy_", copy)
    _LIBRARY.append(library)


def _host_value(value: Any) -> Any:
    """What a host op receives for ``value``: device tensors' values, the host device."""
    if isinstance(value, OnDevice):
        return value.host
    return _to_host_device(value)


def _to_host_device(value: Any) -> Any:
    if isinstance(value, torch.device) and value.type == DEVICE.type:
        return torch.device("cpu")
    if isinstance(value, str) and value.startswith(DEVICE.type):
        return torch.device("cpu")
    return value


class FakeAccelerator(TorchDispatchMode):
    """While active, ``meta`` is an accelerator that computes (on the CPU, under the hood) and
    refuses host tensors mixed into its ops, like CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0  # device ops run (a test can check the device was used at all)
        _register_backend()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        flat, spec = tree_flatten((args, kwargs))
        on_device = any(isinstance(t, OnDevice) for t in flat)
        target = kwargs.get("device")
        to_device = target is not None and torch.device(target).type == DEVICE.type
        if on_device and func not in _CROSSING:
            for value in flat:
                host = isinstance(value, Tensor) and not isinstance(value, OnDevice)
                if host and value.dim() > 0:
                    raise RuntimeError(
                        f"Expected all tensors to be on the same device, but found at least "
                        f"two devices, {DEVICE.type} (the stand-in accelerator) and "
                        f"{value.device}! (in {func}, a host tensor of shape "
                        f"{tuple(value.shape)})"
                    )
        if not on_device and not to_device:
            return func(*args, **kwargs)  # a host op
        if func is aten._has_compatible_shallow_copy_type.default:
            return all(isinstance(t, OnDevice) for t in args)  # Module.to: swap, don't alias
        self.ops += 1
        inner = [_host_value(t) for t in flat]
        args_, kwargs_ = tree_unflatten(inner, spec)
        out = func(*args_, **kwargs_)
        mutated = _mutated_argument(func, args, kwargs)
        if mutated is not None:
            return mutated  # in-place / out= ops return their (device) argument itself
        if func is aten._to_copy.default:
            stays = to_device or (target is None and on_device)
            return OnDevice(out) if stays else out
        if func is aten._local_scalar_dense.default:
            return out
        if func in _CROSSING and func is not aten.index.Tensor and not on_device:
            return out
        flat_out, out_spec = tree_flatten(out)
        # a view of a normal tensor is a normal tensor, also under inference_mode
        normal = torch.is_inference_mode_enabled() and _is_view_of_normal(func, flat)
        with torch.inference_mode(False) if normal else contextlib.nullcontext():
            return tree_unflatten([_wrap(v) for v in flat_out], out_spec)


def _is_view_of_normal(func: Any, flat: list[Any]) -> bool:
    returns = func._schema.returns
    if not returns or returns[0].alias_info is None:
        return False
    return any(isinstance(t, Tensor) and not t.is_inference() for t in flat)


def _mutated_argument(func: Any, args: Any, kwargs: dict[str, Any]) -> Any:
    """The argument an in-place or ``out=`` op writes and returns, else None."""
    schema = func._schema
    if len(schema.returns) != 1:
        return None
    alias = schema.returns[0].alias_info
    if alias is None or not alias.is_write:
        return None
    for i, argument in enumerate(schema.arguments):
        if argument.alias_info is not None and argument.alias_info.is_write:
            if argument.kwarg_only or i >= len(args):
                return kwargs.get(argument.name)
            return args[i]
    return None
