"""A generated corpus of malformed model folders, one-file exports and checkpoints: each fails
in the loader and through the CLI with exactly one line naming the file, exit 2, no traceback,
in well under 5 s, and before the model it describes is allocated.

The corpus starts from one tiny valid export (a session fixture) and breaks one thing per case:
arch.json's syntax, schema, timm keywords (file paths, downloads) and subnet indices; the
safetensors header and tensors; the one-file export's metadata; ``model.checkpoint`` files and
a poisoned ``checkpoints/dense.pt`` on resume.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import automl_hiap as ah
from automl_hiap.cli import main
from automl_hiap.export_formats import export_to
from automl_hiap.model_files import ARCH_FILE, WEIGHTS_FILE
from automl_hiap.models import create_model

from .conftest import TINY_KWARGS, tiny_spec

SPACE = "test_vit.yaml"  # the same tiny ViT as tiny_spec()
SECONDS = 5.0


@dataclass
class Corpus:
    root: Path
    good: Path  # a valid export folder
    one_file: Path  # the same model as one .safetensors file
    arch: dict[str, Any]
    other_weights: Path  # a valid export's weights for another subnet
    dense: dict[str, torch.Tensor]  # the dense model's state_dict


def _subnet(space: ah.SearchSpace) -> ah.Subnet:
    """Both branches kept in both layers, with pruned heads, dims, neurons and input columns,
    so every index list of the schema is present in the file."""
    layers = (
        ah.LayerKeep(
            heads=(ah.HeadKeep(0, tuple(range(8)), tuple(range(16))),),
            neurons=tuple(range(0, 64, 2)),
            attn_in=tuple(range(24)),
        ),
        ah.LayerKeep(
            heads=tuple(ah.HeadKeep(h, tuple(range(16)), tuple(range(16))) for h in range(2)),
            neurons=tuple(range(64)),
            mlp_in=tuple(range(4, 32)),
        ),
    )
    return ah.Subnet(layers).validate(space)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    # warm: the CLI's first imports (the search, MLflow) are not a case's time
    from automl_hiap.search import run_search  # noqa: F401
    from automl_hiap.tracking import open_tracker  # noqa: F401

    root = tmp_path_factory.mktemp("bad_models")
    torch.manual_seed(0)
    spec = tiny_spec()
    model = spec.create().eval()
    space = ah.SearchSpace.from_model(model)
    good = ah.save(ah.slice_subnet(model, _subnet(space), spec).eval(), root / "good")
    one_file = root / "good.safetensors"
    export_to(ah.load(good), "safetensors", one_file)
    other = ah.save(ah.slice_subnet(model, ah.Subnet.dense(space), spec), root / "other")
    return Corpus(
        root=root,
        good=good,
        one_file=one_file,
        arch=json.loads((good / ARCH_FILE).read_text()),
        other_weights=other / WEIGHTS_FILE,
        dense={k: v.contiguous() for k, v in model.state_dict().items()},
    )


Maker = Callable[[Corpus, Path], Path]  # (corpus, fresh folder) -> the path handed to the loader


@dataclass(frozen=True)
class Case:
    name: str
    make: Maker
    expect: str  # a fragment of the one error line
    kind: str = "model"  # model (ah.load), checkpoint (model.checkpoint), resume


def _copy(corpus: Corpus, dest: Path) -> Path:
    shutil.copytree(corpus.good, dest / "model")
    return dest / "model"


def arch(mutate: Callable[[dict[str, Any]], Any]) -> Maker:
    """arch.json with one change (``mutate`` edits the dict, or returns what to write)."""

    def make(corpus: Corpus, dest: Path) -> Path:
        folder = _copy(corpus, dest)
        data = json.loads(json.dumps(corpus.arch))
        replaced = mutate(data)
        written = data if replaced is None else replaced
        (folder / ARCH_FILE).write_text(json.dumps(written))
        return folder

    return make


def arch_bytes(content: bytes) -> Maker:
    def make(corpus: Corpus, dest: Path) -> Path:
        folder = _copy(corpus, dest)
        (folder / ARCH_FILE).write_bytes(content)
        return folder

    return make


def weights(write: Callable[[Corpus, Path], None]) -> Maker:
    """model.safetensors replaced by what ``write`` puts at the path."""

    def make(corpus: Corpus, dest: Path) -> Path:
        folder = _copy(corpus, dest)
        (folder / WEIGHTS_FILE).unlink()
        write(corpus, folder / WEIGHTS_FILE)
        return folder

    return make


def one_file(metadata: dict[str, str] | None) -> Maker:
    """A one-file export whose metadata is ``metadata``."""

    def make(corpus: Corpus, dest: Path) -> Path:
        path = dest / "model.safetensors"
        save_file(load_file(str(corpus.one_file)), str(path), metadata=metadata)
        return path

    return make


def one_file_arch(mutate: Callable[[dict[str, Any]], Any]) -> Maker:
    def edit(corpus: Corpus) -> dict[str, str]:
        data = json.loads(json.dumps(corpus.arch))
        mutate(data)
        return {"format": corpus.arch["format"], "arch": json.dumps(data)}

    def make(corpus: Corpus, dest: Path) -> Path:
        path = dest / "model.safetensors"
        save_file(load_file(str(corpus.one_file)), str(path), metadata=edit(corpus))
        return path

    return make


def raw(content: bytes, name: str = "model.safetensors") -> Maker:
    def make(corpus: Corpus, dest: Path) -> Path:
        (dest / name).write_bytes(content)
        return dest / name

    return make


def checkpoint(write: Callable[[Corpus, Path], None], name: str) -> Maker:
    def make(corpus: Corpus, dest: Path) -> Path:
        write(corpus, dest / name)
        return dest / name

    return make


class Poison:
    """Unpickling this would run a shell command (the loaders must refuse it unrun)."""

    marker = Path("/tmp/automl_hiap_poisoned")

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _header(declared: int, body: bytes) -> bytes:
    return struct.pack("<Q", declared) + body


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set a key path like ``subnet.layers.0.neurons.3`` (``+`` appends to a list)."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if last == "+":
            node.append(value)
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node.pop(int(last) if isinstance(node, list) else last)

    return mutate


def _edit_state(
    change: Callable[[dict[str, torch.Tensor]], None],
) -> Callable[[Corpus, Path], None]:
    def write(corpus: Corpus, path: Path) -> None:
        state = load_file(str(corpus.good / WEIGHTS_FILE))
        change(state)
        save_file(state, str(path))

    return write


L0 = "subnet.layers.0"
KW = "timm_kwargs"
CASES = [
    # arch.json: syntax and size
    Case("arch_not_json", arch_bytes(b"{'format': 1"), "not valid JSON"),
    Case("arch_empty", arch_bytes(b""), "not valid JSON"),
    Case("arch_not_utf8", arch_bytes(b"\xff\xfe{\x00"), "not valid JSON"),
    Case("arch_deep_nesting", arch_bytes(b"[" * 20_000), "recursion limit"),
    Case("arch_is_a_list", arch(lambda a: [a]), "top level: Input should be an object"),
    Case("arch_is_a_folder", lambda c, d: _arch_folder(c, d), "not an exported model"),
    Case("arch_too_big", lambda c, d: _arch_huge(c, d), "more than an architecture needs"),
    # arch.json: schema
    Case("no_timm_model", arch(_drop("timm_model")), "timm_model: missing"),
    Case("wrong_format", arch(_set("format", "pruned/0")), "format: expected"),
    Case("no_subnet", arch(_drop("subnet")), "subnet: missing"),
    Case("subnet_format", arch(_set("subnet.format", 1)), "subnet.format"),
    Case("kwargs_a_list", arch(_set(KW, [16, 4])), "timm_kwargs: Input should be an object"),
    Case("layers_a_dict", arch(_set("subnet.layers", {"0": {}})), "subnet.layers: Input should"),
    Case("layer_a_list", arch(_set(L0, [1, 2])), "subnet.layers[0]: Input should be an object"),
    Case("no_layers", arch(_set("subnet.layers", [])), "at least 1 item"),
    Case("unknown_key", arch(_set("extra", 1)), "extra: Extra inputs are not permitted"),
    Case("negative_neuron", arch(_set(f"{L0}.neurons.0", -1)), "neurons[0]: Input should be"),
    Case("negative_head", arch(_set(f"{L0}.heads.0.index", -1)), "heads[0].index"),
    Case("float_index", arch(_set(f"{L0}.neurons.1", 1.5)), "valid integer"),
    Case("bool_index", arch(_set(f"{L0}.heads.0.qk.0", True)), "valid integer"),
    Case("string_index", arch(_set(f"{L0}.neurons.2", "4")), "valid integer"),
    # arch.json: timm keywords
    Case("checkpoint_path", arch(_set(f"{KW}.checkpoint_path", "/etc/passwd")), "not an allowed"),
    Case("cfg_overlay", arch(_set(f"{KW}.pretrained_cfg_overlay", {"file": "/x"})), "allowed"),
    Case("pretrained_cfg", arch(_set(f"{KW}.pretrained_cfg", {"url": "http://x"})), "allowed"),
    Case("pretrained", arch(_set(f"{KW}.pretrained", True)), "timm_kwargs.pretrained: not an"),
    Case("act_layer", arch(_set(f"{KW}.act_layer", "os.system")), "timm_kwargs.act_layer"),
    Case("width_a_string", arch(_set(f"{KW}.embed_dim", "32")), "embed_dim: Input should be"),
    Case("img_size_bool", arch(_set(f"{KW}.img_size", True)), "positive integer or [height"),
    Case("depth_huge", arch(_set(f"{KW}.depth", 10**6)), "less than or equal to 1024"),
    Case("not_divisible", arch(_set(f"{KW}.embed_dim", 33)), "divisible by num_heads"),
    Case("hub_model", arch(_set("timm_model", "hf-hub:timm/vit_tiny")), "timm_model: String"),
    Case("unknown_model", arch(_set("timm_model", "vit_nonesuch")), "is not a timm model"),
    Case("kwargs_dropped", arch(_set(KW, {})), "expected 12 layers, got 2"),  # vit_tiny's own
    Case("not_a_vit", arch(lambda a: a.update(timm_model="resnet18", timm_kwargs={})), ".blocks"),
    # arch.json: the subnet against the model's dims
    Case("width_4096", arch(_set(f"{KW}.embed_dim", 4096)), "does not fit the architecture"),
    Case("short_subnet", arch(_drop("subnet.layers.1")), "expected 2 layers (timm_kwargs.depth)"),
    Case("long_subnet", arch(lambda a: a["subnet"]["layers"].append({**_layer(a)})), "got 3"),
    Case("neuron_range", arch(_set(f"{L0}.neurons.+", 64)), "neuron indices must be"),
    Case("neuron_twice", arch(_set(f"{L0}.neurons.1", 0)), "neuron indices must be"),
    Case("head_range", arch(_set(f"{L0}.heads.0.index", 2)), "head indices must be"),
    Case("qk_range", arch(_set(f"{L0}.heads.0.qk.+", 16)), "qk dims must be"),
    Case("no_v_dims", arch(_set(f"{L0}.heads.0.v", [])), "keeps 0 v dims"),
    Case("attn_in_range", arch(_set(f"{L0}.attn_in.+", 32)), "attn_in must be"),
    # model.safetensors
    Case("weights_missing", weights(lambda c, p: None), "No such file"),
    Case("weights_a_folder", weights(lambda c, p: p.mkdir()), "not a readable safetensors"),
    Case("weights_empty", weights(lambda c, p: p.write_bytes(b"")), "header too small"),
    Case("weights_pickle", weights(lambda c, p: torch.save(c.dense, p)), "header too large"),
    Case("header_huge", weights(lambda c, p: p.write_bytes(_header(2**40, b"{}"))), "too large"),
    Case("header_short", weights(lambda c, p: p.write_bytes(_header(64, b"{}"))), "header length"),
    Case("header_json", weights(lambda c, p: p.write_bytes(_header(2, b"[]"))), "invalid JSON"),
    Case("truncated", weights(lambda c, p: _truncated(c, p)), "incomplete metadata"),
    Case(
        "unexpected_key", weights(_edit_state(lambda s: s.update(x=torch.ones(1)))), "1 unexpected"
    ),
    Case("missing_key", weights(_edit_state(lambda s: s.pop("head.bias"))), "1 missing tensor"),
    Case("other_subnet", weights(lambda c, p: shutil.copy(c.other_weights, p)), "other-shaped"),
    Case("dense_weights", weights(lambda c, p: save_file(c.dense, str(p))), "does not fit"),
    # one-file exports
    Case("file_no_metadata", one_file(None), "no automl_hiap architecture"),
    Case(
        "file_arch_not_json", one_file({"format": "automl_hiap.pruned_vit/1", "arch": "{"}), "JSON"
    ),
    Case(
        "file_arch_a_list", one_file({"format": "automl_hiap.pruned_vit/1", "arch": "[]"}), "object"
    ),
    Case("file_negative", one_file_arch(_set(f"{L0}.neurons.0", -3)), "greater than or equal"),
    Case("file_checkpoint_path", one_file_arch(_set(f"{KW}.checkpoint_path", "/x")), "allowed"),
    Case("file_pickle", raw(pickle.dumps({"a": 1})), "not a readable safetensors"),
    # model.checkpoint (the dense model's weights) and a search's resume
    Case(
        "ckpt_poison_pt",
        checkpoint(lambda c, p: torch.save({"model": Poison()}, p), "dense.pt"),
        "refused: it pickles objects other than tensors",
        "checkpoint",
    ),
    Case(
        "ckpt_pickle_renamed",
        checkpoint(lambda c, p: torch.save(c.dense, p), "dense.safetensors"),
        "not a readable safetensors",
        "checkpoint",
    ),
    Case(
        "ckpt_other_shapes",
        checkpoint(lambda c, p: save_file(_wider(), str(p)), "wide.safetensors"),
        "other-shaped tensors",
        "checkpoint",
    ),
    Case(
        "ckpt_other_shapes_pt",
        checkpoint(lambda c, p: torch.save(_wider(), p), "wide.pt"),
        "other-shaped tensors",
        "checkpoint",
    ),
    Case(
        "ckpt_a_list",
        checkpoint(lambda c, p: torch.save([torch.ones(2)], p), "list.pt"),
        "expected a state_dict",
        "checkpoint",
    ),
    Case(
        "ckpt_not_torch",
        checkpoint(lambda c, p: p.write_bytes(b"PK\x03\x04 not a zip"), "bad.pt"),
        "not a readable torch file",
        "checkpoint",
    ),
    Case(
        "resume_poison",
        checkpoint(lambda c, p: _poisoned_resume(p), "checkpoints"),
        "refused: it pickles objects other than tensors",
        "resume",
    ),
]


def _layer(data: dict[str, Any]) -> dict[str, Any]:
    layer: dict[str, Any] = data["subnet"]["layers"][0]
    return layer


def _arch_folder(corpus: Corpus, dest: Path) -> Path:
    folder = _copy(corpus, dest)
    (folder / ARCH_FILE).unlink()
    (folder / ARCH_FILE).mkdir()
    return folder


def _arch_huge(corpus: Corpus, dest: Path) -> Path:
    folder = _copy(corpus, dest)
    os.truncate(folder / ARCH_FILE, 65 * 2**20)  # sparse: no disk, refused by its size alone
    return folder


def _truncated(corpus: Corpus, path: Path) -> None:
    path.write_bytes((corpus.good / WEIGHTS_FILE).read_bytes()[:-100])


def _wider() -> dict[str, torch.Tensor]:
    model = tiny_spec(embed_dim=48).create()
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def _poisoned_resume(folder: Path) -> None:
    folder.mkdir()
    torch.save({"model": Poison(), "epoch": 1}, folder / "dense.pt")


def _build(case: Case, corpus: Corpus, root: Path) -> Path:
    dest = root / case.name
    dest.mkdir(parents=True)
    return case.make(corpus, dest)


def _one_line(message: str) -> str:
    lines = message.strip().splitlines()
    assert len(lines) == 1, message
    assert "Traceback" not in message
    return lines[0]


def _load(case: Case, source: Path) -> None:
    if case.kind == "model":
        ah.load(source)
    elif case.kind == "checkpoint":
        create_model(tiny_spec().name, dict(TINY_KWARGS), str(source), pretrained=False)
    else:
        from automl_hiap.config import TrainConfig
        from automl_hiap.trainer import Trainer

        from .conftest import synthetic_data

        data = synthetic_data()
        trainer = Trainer(TrainConfig(batch_size=16), data, checkpoint_dir=source, device="cpu")
        trainer.fit(tiny_spec().create(), epochs=1, phase="dense")


def _cli(case: Case, source: Path, out: Path, turn: int) -> list[str]:
    """The CLI command that reads ``source`` (model cases rotate over evaluate/pull/export)."""
    if case.kind == "checkpoint":
        return [*_search(out), "--set", f"model.checkpoint={source}"]
    if case.kind == "resume":
        return _search(source.parent)
    commands = [
        ["evaluate", str(source), "--space", SPACE],
        ["pull", str(source), "--out", str(out)],
        ["export", str(source), "--format", "safetensors", "--out", str(out / "m.safetensors")],
    ]
    return commands[turn % len(commands)]


def _search(out: Path) -> list[str]:
    return ["search", "--space", SPACE, "--no-tracking", "--no-progress", "--out", str(out)]


def test_the_corpus_is_large_and_its_source_export_is_valid(corpus: Corpus) -> None:
    assert len({c.name for c in CASES}) == len(CASES) >= 60
    assert ah.load(corpus.good).subnet == ah.load(corpus.one_file).subnet


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_bad_model_file_is_one_line_naming_it(
    case: Case, corpus: Corpus, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _build(case, corpus, tmp_path)
    started = time.perf_counter()
    with pytest.raises(ah.UserError) as raised:
        _load(case, source)
    assert time.perf_counter() - started < SECONDS
    line = _one_line(str(raised.value))
    assert case.expect in line
    assert str(tmp_path) in line  # names the file (or the folder holding it)

    out = tmp_path / "out"
    started = time.perf_counter()
    code = main(_cli(case, source, out, CASES.index(case)))
    assert time.perf_counter() - started < SECONDS
    assert code == 2
    error = _one_line(capsys.readouterr().err)
    assert error.startswith("automl_hiap: error: ") and case.expect in error
    if case.kind == "model":
        assert not out.exists()  # pull/export wrote nothing
    assert not Poison.marker.exists()


def test_a_huge_dense_model_behind_a_small_export_is_never_built(
    corpus: Corpus, tmp_path: Path
) -> None:
    """Only the sliced model is allocated: an arch.json whose dense FFN would be 32e9 wide
    (256 GB as float64 keep values, what a full SearchSpace would allocate) but whose kept
    neurons and weights fit loads in a moment, as the same model."""
    folder = arch(_set(f"{KW}.mlp_ratio", 1e9))(corpus, tmp_path)
    started = time.perf_counter()
    model = ah.load(folder)
    assert time.perf_counter() - started < SECONDS
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), ah.load(corpus.good)(x))


# A fresh interpreter, where pytest captures no warnings: each case through the real CLI must
# print exactly one line on stderr; the peak RSS growth of each is reported (no case may build
# the model it describes: the width-4096 arch.json once allocated over 1 GB before failing).
CLI_SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, resource, sys
    import automl_hiap
    from automl_hiap.cli import main

    automl_hiap.load(sys.argv[1])  # warm: imports and first allocations are not the cases'
    results = []
    for argv in json.loads(sys.argv[2]):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        results.append({"code": code, "err": err.getvalue(), "grown_mib": grown / 1024})
    print(json.dumps(results))
    """
)
IN_A_FRESH_PROCESS = ["weights_pickle", "width_4096", "checkpoint_path", "truncated", "no_v_dims"]


def test_the_real_cli_prints_one_line_and_allocates_nothing(corpus: Corpus, tmp_path: Path) -> None:
    commands = []
    for i, name in enumerate(IN_A_FRESH_PROCESS):
        case = next(c for c in CASES if c.name == name)
        turn = 1 + i % 2  # pull, export: the commands that import least
        commands.append(_cli(case, _build(case, corpus, tmp_path), tmp_path / f"out{i}", turn))
    done = subprocess.run(
        [sys.executable, "-c", CLI_SCRIPT, str(corpus.good), json.dumps(commands)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == ""
    for name, result in zip(IN_A_FRESH_PROCESS, json.loads(done.stdout), strict=True):
        assert result["code"] == 2, (name, result)
        assert _one_line(result["err"]).startswith("automl_hiap: error: "), (name, result)
        assert result["grown_mib"] < 64, (name, result)
