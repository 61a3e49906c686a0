"""The files of a pruned model: architecture JSON + safetensors, written and read back.

An export folder holds ``arch.json`` and ``model.safetensors``; a one-file export keeps the
same JSON in the safetensors metadata (key ``arch``). Both are read by one validating loader
(:func:`rebuild`), the only way a model file becomes a model (``load``, ``pull``, ``evaluate``,
``export``, MLflow's pyfunc): nothing is unpickled and no code from the files runs, and a bad
file is one error line naming it, raised before anything is allocated for it:

1. ``arch.json`` is checked against a schema (:class:`Architecture`): keys, types, indices
   non-negative, timm keywords from an allowlist (:class:`~automl_hiap.models.TimmKwargs`);
2. the model is built on the ``meta`` device (no memory) and the subnet checked against its
   dims; the sliced model's tensor names and shapes are compared with the safetensors header;
3. only then are the weights read, and the model takes them as they are (``assign``).

:func:`load` is the one entry point for every local source (folder, search output, MLflow model
folder, one file); only an MLflow URI reaches into the tracking code, so loading a local model
never imports MLflow.
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import save_file
from torch import Tensor, nn

from automl_hiap import layout
from automl_hiap.atomic import atomic_path, write_text
from automl_hiap.errors import UserError
from automl_hiap.models import MAX_DEPTH, ModelSpec, TimmKwargs
from automl_hiap.slicing import build_blocks
from automl_hiap.space import SearchSpace
from automl_hiap.subnet import FORMAT as SUBNET_FORMAT
from automl_hiap.subnet import Subnet
from automl_hiap.tensor_files import Shapes, header, read_safetensors, shapes

ARCH_FILE = "arch.json"
WEIGHTS_FILE = "model.safetensors"
ARCH_FORMAT = "automl_hiap.pruned_vit/1"


def architecture(model: Any) -> dict[str, Any]:
    """The JSON that, with the weights, rebuilds a sliced model."""
    import timm

    spec: ModelSpec = model.model_spec
    subnet: Subnet = model.subnet
    return {
        "format": ARCH_FORMAT,
        "timm_model": spec.name,
        "timm_kwargs": spec.kwargs,
        "timm_version": timm.__version__,
        "subnet": subnet.to_dict(),
    }


def weights(model: nn.Module) -> dict[str, Tensor]:
    """The state_dict as safetensors stores it (contiguous CPU tensors)."""
    return {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}


def save(model: nn.Module, directory: str | Path) -> Path:
    """Write ``arch.json`` + ``model.safetensors`` for a sliced model."""
    if not isinstance(getattr(model, "subnet", None), Subnet):
        raise ValueError("save() takes a model returned by slice_subnet() or load()")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / ARCH_FILE, json.dumps(architecture(model), indent=1))
    with atomic_path(out / WEIGHTS_FILE) as temporary:
        save_file(weights(model), str(temporary), metadata={"format": ARCH_FORMAT})
    return out


MAX_ARCH_BYTES = 64 * 2**20  # an arch.json of the widest ViTs is a few MB


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Index = Annotated[int, Field(ge=0)]


def _is(name: str) -> AfterValidator:
    """A ``format`` field's check: the value must be ``name``."""

    def check(value: str) -> str:
        if value != name:
            raise ValueError(f"expected {name!r}")  # the formatter adds the value
        return value

    return AfterValidator(check)


class HeadSpec(_Strict):
    index: Index
    qk: list[Index]
    v: list[Index]


class LayerSpec(_Strict):
    heads: list[HeadSpec]
    neurons: list[Index]
    attn_in: list[Index] | None = None
    mlp_in: list[Index] | None = None


class SubnetSpec(_Strict):
    format: Annotated[str, _is(SUBNET_FORMAT)]
    layers: Annotated[list[LayerSpec], Field(min_length=1, max_length=MAX_DEPTH)]


class Architecture(_Strict):
    """The schema of ``arch.json`` (what :func:`architecture` writes)."""

    format: Annotated[str, _is(ARCH_FORMAT)]
    timm_model: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]+$", max_length=200)]
    timm_kwargs: TimmKwargs = TimmKwargs()
    timm_version: str | None = None
    subnet: SubnetSpec


_FIELDS = {
    name
    for schema in (Architecture, SubnetSpec, LayerSpec, HeadSpec, TimmKwargs)
    for name in schema.model_fields
}


def _schema_error(where: str, error: ValidationError) -> UserError:
    """The first problem pydantic found, as one line: key path, value, what was expected."""
    first = error.errors(include_url=False)[0]
    kind, loc = first["type"], first["loc"]
    if kind == "json_invalid":
        return UserError(f"{where}: not valid JSON ({first['ctx']['error']})")
    if kind == "extra_forbidden" and loc[:1] == ("timm_kwargs",):
        allowed = ", ".join(TimmKwargs.model_fields)
        return UserError(
            f"{where}: timm_kwargs.{loc[-1]}: not an allowed timm keyword (a file path, a "
            f"download or code is never taken from a model file); allowed: {allowed}"
        )
    *above, last = loc or ("",)
    parts = [p for p in above if isinstance(p, int) or p in _FIELDS]  # not union members' tags
    if isinstance(last, int) or last in _FIELDS or kind == "extra_forbidden":
        parts.append(last)
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    more = error.error_count() - 1
    also = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    if kind == "missing":
        return UserError(f"{where}: {path}: missing (a required key){also}")
    value = repr(first["input"])
    value = value if len(value) <= 60 else value[:57] + "..."
    message = str(first["ctx"]["error"]) if kind == "value_error" else first["msg"]
    return UserError(f"{where}: {path or 'top level'}: {message}, got {value}{also}")


def parse_architecture(text: str | bytes, where: str) -> Architecture:
    """``arch.json``'s content, schema-checked (``where`` names the file in errors)."""
    try:
        return Architecture.model_validate_json(text)
    except ValidationError as exc:
        raise _schema_error(where, exc) from None


def _on_meta(spec: ModelSpec, subnet: Subnet, where: str) -> tuple[Any, Shapes]:
    """The dense model built on the meta device (no memory), once the subnet is checked against
    its block shapes, and the names and shapes of the sliced model's tensors."""
    import timm

    if not timm.is_model(spec.name):
        raise UserError(f"{where}: timm_model: {spec.name!r} is not a timm model")
    depth = spec.kwargs.get("depth", len(subnet.layers))
    if depth != len(subnet.layers):  # before building a model of that depth
        message = f"expected {depth} layers (timm_kwargs.depth), got {len(subnet.layers)}"
        raise UserError(f"{where}: subnet: {message}")
    try:
        with torch.device("meta"):
            model: Any = spec.create()
        # the structure alone (SearchSpace.from_model also costs the model, on the host)
        blocks = getattr(model, "blocks", None)
        if not isinstance(blocks, nn.Sequential) or not blocks:
            raise UserError(f"unsupported model {spec.name}: expected a timm ViT (.blocks)")
        layers = tuple(layout.block_shape(block, i) for i, block in enumerate(blocks))
        problems = subnet.problems(SearchSpace(layers, tokens=0, fixed_macs=0, fixed_params=0))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise UserError(f"subnet: {problems[0]}{more}")
        dense_blocks = model.blocks
        with torch.device("meta"):
            model.blocks = nn.Sequential(*build_blocks(model, subnet))
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    expected = shapes(model.state_dict())
    model.blocks = dense_blocks
    return model, expected


def rebuild(arch: Architecture, weights_file: str | Path, where: str) -> nn.Module:
    """The model ``arch`` describes with the weights in ``weights_file``, in eval mode; checked
    in full against the file's header before anything is allocated."""
    spec = ModelSpec(arch.timm_model, arch.timm_kwargs.given())
    subnet = Subnet.from_dict(arch.subnet.model_dump())
    model, expected = _on_meta(spec, subnet, where)
    state = read_safetensors(weights_file, expected, f"the architecture in {where}")
    model.blocks = nn.Sequential(*build_blocks(model, subnet))  # on the host: sizes checked
    dtypes = {name: t.dtype for name, t in model.state_dict().items()}
    state = {name: t.to(dtypes[name]) for name, t in state.items()}  # e.g. an fp16 file
    model.load_state_dict(state, strict=True, assign=True)  # the meta tensors become the file's
    left = [n for n, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if left:
        raise UserError(f"{where}: unsupported model: {left[0]} is not in the weights file")
    model.subnet = subnet
    model.model_spec = spec
    return model.eval()


def load_folder(directory: str | Path) -> nn.Module:
    """Rebuild a model from its export folder."""
    folder = Path(directory)
    arch_file = folder / ARCH_FILE
    try:
        size = arch_file.stat().st_size
        if size > MAX_ARCH_BYTES:
            raise UserError(f"{arch_file}: {size} bytes, more than an architecture needs")
        text = arch_file.read_bytes()
    except OSError as exc:
        raise UserError(f"{folder}: not an exported model ({ARCH_FILE}: {exc.strerror})") from None
    arch = parse_architecture(text, str(arch_file))
    return rebuild(arch, folder / WEIGHTS_FILE, str(arch_file))


def load_safetensors(path: str | Path) -> nn.Module:
    """Rebuild a model from a single ``.safetensors`` file written by ``--format safetensors``."""
    path = Path(path)
    metadata, _ = header(path)
    if metadata.get("format") != ARCH_FORMAT or "arch" not in metadata:
        raise UserError(
            f"{path}: no automl_hiap architecture in its metadata (expected format "
            f"{ARCH_FORMAT!r}; write one with `automl_hiap export DIR --format safetensors`)"
        )
    where = f"{path} (metadata 'arch')"
    return rebuild(parse_architecture(metadata["arch"], where), path, where)


def find_export(path: Path) -> Path:
    """The folder holding ``arch.json``: ``path`` itself or the one folder below it that does
    (a search's ``model/``, an MLflow model's ``data/model/``)."""
    if (path / ARCH_FILE).is_file():
        return path
    found = sorted(p.parent for p in path.rglob(ARCH_FILE))
    if not found:
        raise UserError(f"{path}: no {ARCH_FILE} in it: not an exported model")
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found[:3])
        raise UserError(f"{path}: several exported models ({listed}); name one of them")
    return found[0]


def load(path: str | Path) -> nn.Module:
    """A model from a local ``.safetensors`` file or export folder (or a folder holding one)."""
    path = Path(path)
    return load_safetensors(path) if path.is_file() else load_folder(find_export(path))
