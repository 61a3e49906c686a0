"""A generated corpus of malformed search-space files and flags, each run through the real CLI.

Every case is the bundled ``test_vit.yaml`` with one defect. Each must exit non-zero within
seconds, before any compute, printing exactly one error line that names the file (or the
flag) and the key, and no traceback. Training is disabled for the whole module: a case that is
wrongly accepted fails the moment it would start to train.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from automl_hiap import strict_yaml, trainer
from automl_hiap.cli import main
from automl_hiap.config import bundled_spaces, load_config, resolve_space_path
from automl_hiap.cost import subnet_cost
from automl_hiap.models import ModelSpec
from automl_hiap.plan import resolve, smallest_macs
from automl_hiap.selection import select_to_budget
from automl_hiap.space import BlockKeep, Constraints, SearchSpace, Unit

BASE_TEXT = resolve_space_path("test_vit.yaml").read_text()
BASE: dict[str, Any] = yaml.safe_load(BASE_TEXT)
SECONDS = 5.0


class Trained(Exception):
    """Raised by the disabled trainer: the search got as far as training."""


@pytest.fixture(scope="module", autouse=True)
def _imported() -> None:
    """What ``search`` imports once per process (torch, timm, MLflow: seconds) is loaded
    before the clock starts: the limit is on the checks, not on a cold start."""
    import automl_hiap.search  # noqa: F401
    from automl_hiap import plugins
    from automl_hiap.tracking import open_tracker  # noqa: F401  (MLflow)

    plugins.available()  # imports every installed strategy


@pytest.fixture(autouse=True)
def _no_training(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    phases: list[str] = []

    def fit(self: Any, model: Any, epochs: int, phase: str = "", **kwargs: Any) -> None:
        phases.append(phase)
        raise Trained(phase)

    monkeypatch.setattr(trainer.Trainer, "fit", fit)
    return phases


@dataclass(frozen=True)
class Case:
    """One malformed input: the file's content, the extra flags, and the key its error names."""

    id: str
    content: str | bytes
    key: str
    args: tuple[str, ...] = ()
    says: str = ""  # a phrase the line must hold, where the wording is the point


def edited(key: str, value: Any, **more: Any) -> str:
    """The base file with ``key`` (dotted) set to ``value`` (and each top-level key of
    ``more``), as YAML (.nan / .inf included)."""
    raw = copy.deepcopy(BASE) | more
    *parents, last = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return yaml.safe_dump(raw, sort_keys=False)


def with_text(section: str, text: str) -> str:
    """The base file with one more top-level block of raw YAML text (``section: ...``)."""
    raw = copy.deepcopy(BASE)
    raw.pop(section, None)
    return yaml.safe_dump(raw, sort_keys=False) + text


def bomb() -> str:
    """Billion laughs as a flow list: nine anchors of nine aliases each, 9**9 strings."""
    items = ['&l0 ["lol"' + ', "lol"' * 8 + "]"]
    items += [f"&l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)]
    return "[" + ", ".join(items) + "]"


def kwargs_bomb() -> str:
    """The bomb as extra entries of ``model.kwargs`` (a mapping of anchored lists)."""
    kwargs = "".join(f"    {k}: {v}\n" for k, v in BASE["model"]["kwargs"].items())
    laughs = "    l0: &l0 [" + ", ".join(['"lol"'] * 9) + "]\n"
    laughs += "".join(
        f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, 9)
    )
    body = f"model:\n  name: {BASE['model']['name']}\n  kwargs:\n{kwargs}{laughs}"
    return with_text("model", body)


def mean_bomb() -> str:
    return with_text("data", f"data:\n  format: synthetic\n  image_size: 16\n  mean: {bomb()}\n")


def nested(depth: int, open_: str, close: str) -> str:
    return edited("model.kwargs.extra", "NESTED").replace("NESTED", open_ * depth + close * depth)


TUNE = "tune:\n  trials: 2\n  params:\n    finetune_lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
BASE_DUMP = yaml.safe_dump(BASE, sort_keys=False)

CASES = [
    # decoding, size, nesting, aliases, duplicate keys, syntax
    Case("latin1-byte", BASE_TEXT.encode() + "# caf\xe9\n".encode("latin-1"), "line", says="UTF-8"),
    Case("invalid-byte", b"\xff\xfe" + BASE_TEXT.encode(), "line 1", says="UTF-8"),
    Case("utf16", BASE_TEXT.encode("utf-16"), "line 1", says="UTF-8"),
    Case("too-large", BASE_TEXT + "#" + "x" * 300_000 + "\n", "KiB"),
    Case("bomb-kwargs", kwargs_bomb(), "model.kwargs", says="alias"),
    Case("bomb-mean", mean_bomb(), "data.mean", says="alias"),
    Case("deep-flow-list", nested(20_000, "[", "]"), "model.kwargs.extra", says="deeper"),
    Case("deep-flow-map", nested(20_000, "{a: ", "}"), "model.kwargs"),
    Case(
        "deep-block-list",
        BASE_DUMP + "extra:\n" + "- " * 20_000 + "x\n",
        "extra",
        says="deeper",
    ),
    Case("recursive-alias", BASE_DUMP + "extra: &a [*a]\n", "extra", says="recursive"),
    Case("many-values", edited("model.kwargs.extra", list(range(20_000))), "model.kwargs.extra"),
    Case("duplicate-budget", BASE_TEXT + "budget: 0.3\n", "budget", says="duplicate key"),
    Case(
        "duplicate-nested",
        BASE_TEXT.replace("  lr: 1.0e-3\n", "  lr: 1.0e-3\n  lr: 1.0e-2\n"),
        "train.lr",
        says="duplicate key",
    ),
    Case(
        "duplicate-kwarg",
        BASE_TEXT.replace("depth: 2,", "depth: 2, depth: 3,"),
        "model.kwargs.depth",
        says="duplicate key",
    ),
    Case("unclosed", BASE_TEXT + "extra: [1, 2\n", "line", says="malformed YAML"),
    Case("tab-indent", BASE_TEXT + "train2:\n\tlr: 1\n", "line", says="malformed YAML"),
    Case("two-documents", BASE_TEXT + "---\nbudget: 0.3\n", "line", says="malformed YAML"),
    Case("python-tag", BASE_TEXT + "extra: !!python/object/apply:os.system [id]\n", "line"),
    Case("nul-byte", BASE_TEXT + "extra: a\x00b\n", "line 20", says="printable"),
    Case("undefined-alias", BASE_TEXT + "extra: *nowhere\n", "line", says="malformed YAML"),
    Case("top-level-list", "- model\n- data\n", "top level"),
    # non-finite numbers, wherever they are
    *(
        Case(f"{key}={text}", edited(key, value), key, says="finite")
        for key, value, text in [
            ("train.lr", float("nan"), "nan"),
            ("train.lr", float("inf"), "inf"),
            ("train.weight_decay", float("inf"), "inf"),
            ("train.warmup_epochs", float("inf"), "inf"),
            ("train.grad_clip", float("inf"), "inf"),
            ("train.label_smoothing", float("nan"), "nan"),
            ("budget", float("nan"), "nan"),
            ("budget", float("inf"), "inf"),
            ("budget", float("-inf"), "-inf"),
            ("data.val_fraction", float("nan"), "nan"),
            ("data.std", [0.2, float("inf"), 0.2], "inf"),
            ("data.mean", [float("nan"), 0.5, 0.5], "nan"),
            ("model.kwargs.mlp_ratio", float("inf"), "inf"),
            ("strategy.params.gate_lr", float("inf"), "inf"),
            ("strategy.params.finetune_lr", float("nan"), "nan"),
            ("train.distill", {"alpha": 0.5, "temperature": float("inf")}, "inf"),
            ("space.constraints.min_neuron_fraction", float("nan"), "nan"),
        ]
    ),
    Case("lr=inf-override", BASE_TEXT, "train.lr", ("--set", "train.lr=.inf"), says="finite"),
    Case(
        "tune-high-inf",
        with_text("tune", TUNE.replace("high: 1.0e-2", "high: .inf")),
        "tune.params.finetune_lr.high",
        says="finite",
    ),
    # constraints the model cannot satisfy (it has 2 heads of 16 dims, 64 neurons)
    Case("min-heads", edited("space.constraints.min_heads", 5), "space.constraints.min_heads"),
    Case(
        "min-head-dims",
        edited("space.constraints.min_head_dims", 100),
        "space.constraints.min_head_dims",
    ),
    Case("round-to", edited("space.constraints.round_to", 1000), "space.constraints.round_to"),
    Case(
        "round-to-neurons",
        edited("space", {"units": ["neuron"], "constraints": {"round_to": 100}}, budget=1.0),
        "space.constraints.round_to",
    ),
    Case("image-size", edited("data.image_size", 32), "data.image_size"),
    Case("classes", edited("data.num_classes", 4), "model.kwargs.num_classes"),
    Case("no-weights", edited("train.dense_epochs", 0), "model.checkpoint", says="no weights"),
    Case("units-empty", edited("space.units", []), "space.units", says="at least one unit"),
    Case("units-twice", edited("space.units", ["head", "head"]), "space.units"),
    Case("units-unknown", edited("space.units", ["heads"]), "space.units.0"),
    Case(
        "units-strategy",
        edited("space.units", ["head"], budget=0.9),
        "space.units",
        ("--strategy", "sero"),
        says="SERo",
    ),
    # budgets below the smallest subnet, above the dense model, or not a budget
    Case("budget-1K", edited("budget", "1K"), "budget", says="smallest subnet"),
    Case("budget-tiny-fraction", edited("budget", 0.001), "budget", says="smallest subnet"),
    Case(
        "budget-heads-only",
        edited("space.units", ["head"]),
        "budget",
        says="smallest subnet",
    ),
    Case("flag-budget-1K", BASE_TEXT, "--budget", ("--budget", "1K"), says="smallest subnet"),
    Case("budget-5G", edited("budget", "5G"), "budget", says="larger than the dense"),
    # H6's budget parser: a bare number above 1 is neither a fraction nor a unit-less MACs count
    Case("flag-budget-1.5", BASE_TEXT, "--budget", ("--budget", "1.5"), says="fraction ≤ 1"),
    Case("budget-1.5", edited("budget", 1.5), "budget", says="fraction ≤ 1"),
    Case("budget-word", edited("budget", "half"), "budget"),
    Case("budget-negative", edited("budget", -0.5), "budget"),
    # timm's constructor refuses the kwargs
    Case("embed-dim-33", edited("model.kwargs.embed_dim", 33), "model.kwargs", says="divisible"),
    Case("num-heads-0", edited("model.kwargs.num_heads", 0), "model.kwargs"),
    Case("patch-size-0", edited("model.kwargs.patch_size", 0), "model.kwargs"),
    Case("mlp-ratio-negative", edited("model.kwargs.mlp_ratio", -1.0), "model.kwargs"),
    Case("unknown-kwarg", edited("model.kwargs.colour", "red"), "model.kwargs", says="colour"),
    Case(
        "kwarg-an-export-cannot-carry",
        edited("model.kwargs.weight_init", "jax"),
        "model.kwargs.weight_init",
        says="exported model",
    ),
    Case(
        "kwarg-a-file-path",
        edited("model.kwargs.checkpoint_path", "/etc/passwd"),
        "model.kwargs.checkpoint_path",
        says="reads files",
    ),
    Case("global-pool", edited("model.kwargs.global_pool", "bogus"), "model.kwargs"),
    Case("depth-0", edited("model.kwargs.depth", 0), "model"),
    Case("kwargs-not-a-map", edited("model.kwargs", 5), "model.kwargs"),
    # unknown keys
    Case("unknown-top", edited("extra", 1), "extra", says="unknown key"),
    Case("unknown-model", edited("model.weights", "x"), "model.weights", says="unknown key"),
    Case("unknown-train", edited("train.learning_rate", 0.1), "train.learning_rate"),
    Case("unknown-constraint", edited("space.constraints.max_heads", 1), "max_heads"),
    Case("unknown-param", edited("strategy.params.bogus", 1), "strategy.params.bogus"),
    Case("unknown-tracking", edited("tracking.server", "x"), "tracking.server"),
    Case("unknown-tune", with_text("tune", TUNE + "  bogus: 1\n"), "tune.bogus"),
    # wrong types and values
    Case("batch-size-word", edited("train.batch_size", "many"), "train.batch_size"),
    Case("batch-size-0", edited("train.batch_size", 0), "train.batch_size"),
    Case("batch-size-float", edited("train.batch_size", 1.5), "train.batch_size"),
    Case("image-size-word", edited("data.image_size", "big"), "data.image_size"),
    Case("data-format", edited("data.format", "png"), "data.format"),
    Case("mean-length", edited("data.mean", [0.5, 0.5]), "data.mean"),
    Case("model-name-number", edited("model.name", 5), "model.name"),
    Case("model-name-unknown", edited("model.name", "not_a_vit"), "model.name"),
    Case("strategy-unknown", edited("strategy.name", "nope"), "strategy.name"),
    Case("checkpoint-missing", edited("model.checkpoint", "/no/such.pt"), "model.checkpoint"),
    Case("device", edited("train.device", "gpu0"), "train.device"),
    Case("amp", edited("train.amp", "fp8"), "train.amp"),
    Case("space-list", edited("space", ["head"]), "space"),
    Case("no-model", yaml.safe_dump({k: v for k, v in BASE.items() if k != "model"}), "model"),
    Case("no-data", yaml.safe_dump({k: v for k, v in BASE.items() if k != "data"}), "data"),
    Case("tune-no-params", with_text("tune", "tune: {trials: 2, params: {}}\n"), "tune.params"),
    Case(
        "tune-low-high",
        with_text("tune", TUNE.replace("low: 1.0e-4", "low: 1.0")),
        "tune.params.finetune_lr",
    ),
    # overrides go through the same checks
    Case(
        "set-duplicate",
        BASE_TEXT,
        "model.kwargs.a",
        ("--set", "model.kwargs={a: 1, a: 2}"),
        says="duplicate",
    ),
    Case(
        "set-bomb",
        BASE_TEXT,
        "data.mean",
        ("--set", "data.mean=" + bomb()),
    ),
    Case("set-deep", BASE_TEXT, "data.mean", ("--set", "data.mean=" + "[" * 20_000 + "]" * 20_000)),
    Case("set-long-key", BASE_TEXT, "--set", ("--set", "a." * 5_000 + "b=1")),
    Case("set-under-scalar", BASE_TEXT, "train.lr", ("--set", "train.lr.x=1")),
    Case("set-no-value", BASE_TEXT, "--set", ("--set", "train.lr")),
]


def run_search(tmp_path: Path, content: str | bytes, args: tuple[str, ...], capsys: Any) -> Any:
    path = tmp_path / "space.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    out = tmp_path / "out"
    capsys.readouterr()
    started = time.perf_counter()
    flags = ["--out", str(out), "--no-tracking", "--no-progress", *args]
    code = main(["search", "--space", str(path), *flags])
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    return path, out, code, captured, seconds


def test_the_corpus_is_large_and_its_cases_distinct() -> None:
    assert len(CASES) >= 60
    assert len({case.id for case in CASES}) == len(CASES)
    assert len({(case.content, case.args) for case in CASES}) == len(CASES)
    load_config(resolve_space_path("test_vit.yaml"))  # the base itself is valid


def test_a_bomb_is_refused_in_milliseconds() -> None:
    started = time.perf_counter()
    with pytest.raises(strict_yaml.YAMLRefused, match="alias"):
        strict_yaml.load(f"mean: {bomb()}")
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_fails_fast_in_one_line(tmp_path: Path, capsys: Any, case: Case) -> None:
    path, out, code, captured, seconds = run_search(tmp_path, case.content, case.args, capsys)
    lines = captured.err.splitlines()
    assert code != 0
    assert len(lines) == 1, captured.err
    (line,) = lines
    assert line.startswith("automl_hiap: error: "), line
    assert "Traceback" not in captured.err + captured.out
    names_the_flag = line.startswith("automl_hiap: error: --")
    assert names_the_flag or str(path) in line, line  # the file (or the flag) ...
    assert case.key in line, line  # ... and the key
    assert case.says in line, line
    assert len(line) < 600, line  # one readable line, not a dump of the value
    assert seconds < SECONDS
    assert not out.exists()  # nothing written: it stopped before any compute


def test_every_problem_is_reported_at_once_one_line_each(tmp_path: Path, capsys: Any) -> None:
    """The file's problems in one pass, and then the model's (once the file is valid)."""
    text = edited("train", {"lr": float("inf"), "batch_size": 0, "optimizer": "sgd"})
    path, _, code, captured, _ = run_search(tmp_path, text, (), capsys)
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 3, captured.err
    for line, key in zip(lines, ["train.lr", "train.batch_size", "train.optimizer"], strict=True):
        assert f"{path}: {key}: " in line
    text = edited("space.constraints", {"min_heads": 5, "min_head_dims": 100}, budget=0.001)
    path, _, code, captured, _ = run_search(tmp_path, text, (), capsys)
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 3, captured.err
    for line, key in zip(lines, ["min_heads", "min_head_dims", "budget"], strict=True):
        assert str(path) in line and key in line


def test_a_budget_below_the_smallest_subnet_stops_before_the_dense_training(
    tmp_path: Path, capsys: Any, _no_training: list[str]
) -> None:
    """``test_vit.yaml`` has no weights, so a search trains its dense model first."""
    _, _, code, captured, seconds = run_search(tmp_path, BASE_TEXT, ("--budget", "20K"), capsys)
    assert code == 2 and "--budget: expected at least" in captured.err, captured.err
    assert _no_training == [] and seconds < SECONDS
    with pytest.raises(Trained):  # the control: a budget it can meet goes on to train
        run_search(tmp_path, BASE_TEXT, ("--budget", "0.5"), capsys)
    assert _no_training == ["dense"]


def zero_scores(space: SearchSpace) -> list[BlockKeep]:
    return [
        BlockKeep(
            attn=torch.zeros(()),
            head=torch.zeros(s.num_heads),
            ffn=torch.zeros(()),
            qk=torch.zeros(s.num_heads, s.head_dim),
            v=torch.zeros(s.num_heads, s.head_dim),
            neuron=torch.zeros(s.mlp_hidden),
            attn_in=torch.zeros(s.embed_dim),
            mlp_in=torch.zeros(s.embed_dim),
        )
        for s in space.layers
    ]


@pytest.mark.parametrize(
    ("units", "constraints"),
    [
        (list(Unit), Constraints()),
        (list(Unit), Constraints(min_heads=2, min_head_dims=5, round_to=4)),
        ([Unit.HEAD, Unit.NEURON], Constraints(min_neuron_fraction=0.5, round_to=3)),
        ([Unit.QK_DIM, Unit.V_DIM, Unit.ATTN_IN], Constraints(min_head_dims=16)),
        ([Unit.ATTN_BLOCK, Unit.FFN_BLOCK, Unit.MLP_IN], Constraints(round_to=8)),
        ([Unit.HEAD], Constraints(min_heads=1)),
    ],
)
def test_the_smallest_subnet_is_the_greedy_selections_floor(
    units: list[Unit], constraints: Constraints
) -> None:
    """The budget check's floor is exactly where selecting to a zero budget ends."""
    model = ModelSpec("vit_tiny_patch16_224", BASE["model"]["kwargs"]).create()
    space = SearchSpace.from_model(model, units, constraints)
    floor = select_to_budget(space, zero_scores(space), 0.0, strict=False)
    assert smallest_macs(space) == subnet_cost(space, floor).macs


@pytest.mark.parametrize("name", bundled_spaces())
def test_the_bundled_spaces_pass_every_check(name: str) -> None:
    config = load_config(name, ["model.checkpoint=null"], check_model=False)
    plan = resolve(config, meta=True)
    assert plan.target is None or plan.target >= smallest_macs(plan.space)


def test_aliases_and_merge_keys_within_the_limits_still_load(tmp_path: Path) -> None:
    text = "base: &b {x: 1, y: [1, 2]}\nother: {<<: *b, y: 3}\nsame: *b\n"
    assert strict_yaml.load(text) == {
        "base": {"x": 1, "y": [1, 2]},
        "other": {"x": 1, "y": 3},
        "same": {"x": 1, "y": [1, 2]},
    }
    path = tmp_path / "space.yaml"
    path.write_text(
        BASE_TEXT.replace("  batch_size: 32\n", "  batch_size: &b 32\n  eval_batch_size: *b\n")
    )
    config = load_config(path)
    assert config.train.batch_size == config.train.eval_batch_size == 32
