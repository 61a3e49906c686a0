"""What a newcomer sees: quick commands answer at once, `search` says what it will do before it
loads torch, and its output is a readable record (headings, one line per epoch, a summary that
says where everything went), with plain lines under --no-progress."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from automl_hiap import listing, plugins
from automl_hiap.cli import main
from automl_hiap.config import load_config, verify_model_name
from automl_hiap.console import Console, duration, format_metric
from automl_hiap.errors import ConfigError
from automl_hiap.preview import tracking_target
from automl_hiap.trainer import EpochEnd

HEAVY = ("torch", "timm", "mlflow", "optuna", "matplotlib", "pydantic")
# CPU seconds of the whole process, interpreter start-up included: wall time on a shared,
# loaded machine says little, and importing torch alone costs more than this
QUICK_CPU_S = 0.6
FIRST_OUTPUT_S = 2.0  # wall clock, scaled by how overloaded the machine is


def wall_limit(seconds: float) -> float:
    """``seconds`` on an idle machine, more when runnable processes outnumber the cores."""
    return seconds * max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))


# runs the CLI in a fresh interpreter, then reports which heavy modules it imported
PROBE = """
import sys, time
started = time.perf_counter()
from automl_hiap.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:  # --help and argparse errors exit
    code = exc.code
took = time.perf_counter() - started
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(f"PROBE code={{code}} heavy={{','.join(heavy)}} seconds={{took:.3f}}", file=sys.stderr)
"""


def probe(*args: str) -> tuple[int, list[str], float, str]:
    """(exit code, heavy modules imported, CPU seconds of the process, stdout)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    line = next(li for li in result.stderr.splitlines() if li.startswith("PROBE "))
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    heavy = [m for m in fields["heavy"].split(",") if m]
    return int(fields["code"]), heavy, cpu, result.stdout


@pytest.mark.parametrize(
    "args",
    [["--help"], ["spaces"], ["strategies"], ["search"], ["search", "--help"], ["nope"]],
    ids=["help", "spaces", "strategies", "argument-error", "search-help", "unknown-command"],
)
def test_quick_commands_answer_at_once_without_torch(args: list[str]) -> None:
    code, heavy, cpu, out = probe(*args)
    assert heavy == [], f"automl_hiap {' '.join(args)} imported {heavy}"
    assert code in (0, 2)
    assert cpu < QUICK_CPU_S, f"automl_hiap {' '.join(args)} took {cpu:.2f} CPU s"
    if args == ["spaces"]:
        assert "digits.yaml" in out and "data=digits" in out and "strategy=magnitude" in out


def test_spaces_lists_every_bundled_file_with_what_it_is_for() -> None:
    from automl_hiap.config import bundled_spaces

    entries = {e.file: e for e in listing.space_entries()}
    assert sorted(entries) == bundled_spaces()
    digits = entries["digits.yaml"]
    assert (digits.model, digits.data, digits.strategy) == (
        "vit_tiny_patch16_224",
        "digits",
        "magnitude",
    )
    assert digits.about.startswith("The quickstart") and digits.needs == ()


def test_spaces_says_how_to_point_a_space_at_missing_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGENET_ROOT", "/no/such/imagenet")
    entry = next(e for e in listing.space_entries() if e.file == "deit_small.yaml")
    assert entry.needs == (
        "data.root /no/such/imagenet (set IMAGENET_ROOT, or --set data.root=PATH)",
    )


def test_strategy_listing_read_from_source_equals_the_imported_one() -> None:
    assert listing.ENTRY_POINT_GROUP == plugins.ENTRY_POINT_GROUP
    static = listing.static_strategy_entries()
    assert static is not None, "a built-in strategy is no longer readable without importing it"
    assert static == listing.imported_strategy_entries()
    nni = next(e for e in static if e.name == "nni")  # its install hint is a module constant
    assert all("automl_hiap[nni]" in hint for hint in nni.missing)


PLUGIN = "automl_hiap_listing_probe"


@pytest.mark.parametrize(
    "body",
    [
        'name = "probe"\n    description = "made " + "up"',  # not a literal
        'name = "other"\n    description = "misnamed"',  # the real discovery warns about it
    ],
)
def test_an_unreadable_plugin_sends_the_listing_through_real_discovery(
    body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / f"{PLUGIN}.py").write_text(
        f"from automl_hiap.strategy import Strategy\n\n\nclass Probe(Strategy):\n    {body}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    probe_entry = EntryPoint("probe", f"{PLUGIN}:Probe", listing.ENTRY_POINT_GROUP)
    builtin = list(listing.entry_points(group=listing.ENTRY_POINT_GROUP))
    monkeypatch.setattr(listing, "entry_points", lambda group: [*builtin, probe_entry])
    assert listing.static_strategy_entries() is None
    calls: list[int] = []
    monkeypatch.setattr(listing, "imported_strategy_entries", lambda: calls.append(1) or [])
    listing.strategy_entries()
    assert calls == [1]
    sys.modules.pop(PLUGIN, None)


def test_a_config_can_be_read_before_timm_and_checked_later(tmp_path: Path) -> None:
    space = tmp_path / "typo.yaml"
    space.write_text("model: {name: vit_tinyy_patch16_224}\ndata: {format: synthetic}\n")
    with pytest.raises(ConfigError) as eager:
        load_config(space)
    config = load_config(space, check_model=False)
    with pytest.raises(ConfigError) as deferred:
        verify_model_name(config, space)
    assert str(deferred.value) == str(eager.value)
    assert "model.name: expected a timm model name" in str(eager.value)


@pytest.mark.parametrize(
    ("flag", "env", "configured", "expected"),
    [
        (None, None, None, "sqlite:///mlflow.db"),
        (None, None, "http://team:5000", "http://team:5000"),
        (None, "sqlite:///env.db", "http://team:5000", "sqlite:///env.db"),
        ("sqlite:///flag.db", "sqlite:///env.db", None, "sqlite:///flag.db"),
    ],
)
def test_the_plan_names_the_store_mlflow_will_use(
    flag: str | None,
    env: str | None,
    configured: str | None,
    expected: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from automl_hiap.tracking.store import resolve_uri

    if env is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", env)
    overrides = [] if configured is None else [f"tracking.uri={configured}"]
    config = load_config("test_vit.yaml", overrides)
    args = type("Args", (), {"tracking_uri": flag, "no_tracking": False})()
    assert resolve_uri(config.tracking.uri, flag) == expected
    assert tracking_target(args, config) == f"MLflow, {expected}"


SPY = """
import sys
from automl_hiap import cli, preview
shown = preview.show_plan
def spy(*args):
    shown(*args)
    print("HEAVY " + ",".join(sorted(m for m in {heavy!r} if m in sys.modules)), flush=True)
    raise SystemExit(0)
preview.show_plan = spy
cli.main(sys.argv[1:])
"""


def test_search_says_what_it_will_do_before_loading_torch(tmp_path: Path) -> None:
    """The plan is printed before torch, timm or MLflow is imported (pydantic: the config)."""
    args = ["search", "--space", "digits.yaml", "--out", str(tmp_path / "out"), "--no-progress"]
    result = subprocess.run(
        [sys.executable, "-c", SPY.format(heavy=HEAVY), *args, "--budget", "0.4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "HEAVY pydantic", lines[-1]
    plan = "\n".join(lines)
    for text in (
        "automl_hiap search: digits.yaml ->",
        "vit_tiny_patch16_224 (img_size=16",
        "no weights: trains 25 dense epochs first",
        "digits, 16 px",
        "digits.yaml (bundled)",
        "0.4 of the dense MACs (--budget)",
        "magnitude (finetune_epochs=8)",
        str(tmp_path / "out"),
        "MLflow, ",
    ):
        assert text in plan, text


def test_search_prints_its_first_line_within_two_seconds(tmp_path: Path) -> None:
    command = ["automl_hiap", "search", "--space", "test_vit.yaml", "--out", str(tmp_path)]
    command = [sys.executable, "-m", "automl_hiap.cli", *command[1:], "--no-tracking"]
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        took = time.perf_counter() - started
    finally:
        process.kill()
        process.communicate(timeout=60)
    assert first.startswith("automl_hiap search: test_vit.yaml"), first
    limit = wall_limit(FIRST_OUTPUT_S)
    assert took < limit, f"first output after {took:.2f} s (limit {limit:.1f} s at this load)"


def test_no_progress_search_is_a_plain_readable_log(tmp_path: Path, capfd) -> None:
    out = tmp_path / "run"
    code = main(
        [
            "search",
            "--space",
            "test_vit.yaml",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "strategy.params.finetune_epochs=1",
        ]
    )
    captured = capfd.readouterr()
    assert code == 0, captured.err
    text = captured.out + captured.err
    assert "\r" not in text
    assert "\x1b" not in text  # no terminal control sequences either
    for heading in (
        "== model and data",
        "== dense training: 2 epochs x 8 steps, batch 32",
        "== evaluation of the dense model",
        "== search: magnitude to",
        "== fine-tune of the sliced model (magnitude_finetune): 1 epochs",
        "== evaluation of the pruned model",
        "== measurement: images/s of both models at batch 64",
        f"== export to {out}",
        "== summary",
    ):
        assert heading in captured.out, heading
    records = [li for li in captured.out.splitlines() if li.startswith("   dense ") and "/2" in li]
    assert len(records) == 2 and "val_top1" in records[0] and "eta" in records[0]
    assert any(li.startswith("   magnitude_finetune 1/1") for li in captured.out.splitlines())
    assert f"output folder {out}:" in captured.out
    for name in ("metrics.json", "structure.png", "model/", "subnet.json", "mlflow_run.json"):
        assert f"   {name}" in captured.out, name
    assert "MLflow run " in captured.out


def test_progress_bars_say_which_epoch_of_how_many(capsys) -> None:
    import torch

    from automl_hiap.config import TrainConfig
    from automl_hiap.trainer import Trainer

    from .conftest import synthetic_data, tiny_spec

    torch.manual_seed(0)
    trainer = Trainer(TrainConfig(batch_size=32), synthetic_data(64), progress=True)
    trainer.fit(tiny_spec().create(), 2, "dense")
    err = capsys.readouterr().err
    assert "dense 1/2" in err and "dense 2/2" in err


def test_the_console_keeps_one_line_per_epoch_with_the_strategys_figures() -> None:
    stream = io.StringIO()
    console = Console(bars=False, stream=stream)
    console.label("mine_finetune", "fine-tune of the sliced model")
    console.phase_start("hiap", 3, 10, 64)
    metrics = {"train_loss": 1.5, "train_top1": 0.4, "val_top1": 0.5, "val_loss": 1.2}
    metrics |= {"expected_macs": 0.523, "tau": 0.75, "kept_heads": 9.0}
    for epoch in (1, 2, 3):
        console(EpochEnd("hiap", epoch, 3, metrics, None))
    console.phase_start("mine_finetune", 2, 5, 64, done=2)
    lines = stream.getvalue().splitlines()
    assert lines[1].startswith("== search phase hiap: 3 epochs x 10 steps, batch 64 ==")
    record = lines[2]
    assert record.startswith("   hiap 1/3  train_loss 1.5  train_top1 40.0%  val_top1 50.0%")
    assert "expected_macs 52.3%" in record and "tau 0.75" in record and "kept_heads 9" in record
    assert "val_loss" not in record and "eta" in record
    assert "eta" not in lines[4]  # the last epoch of a phase has nothing left
    assert "fine-tune of the sliced model (mine_finetune): 2 epochs" in stream.getvalue()
    assert "finished earlier" in lines[-1]


def test_the_console_is_quiet_when_asked_and_off_rank_zero(monkeypatch) -> None:
    stream = io.StringIO()
    silent = Console.silent()
    silent.stream = stream
    silent.heading("x")
    monkeypatch.setenv("RANK", "1")
    other_rank = Console(stream=stream)
    other_rank.info("y")
    assert stream.getvalue() == ""


def test_console_formats() -> None:
    assert duration(75.2) == "1:15" and duration(3725) == "1:02:05"
    assert format_metric("val_top1", 0.5) == "val_top1 50.0%"
    assert format_metric("macs", 2.5e6) == "macs 2.5M"
    assert format_metric("lambda_macro", 0.123456) == "lambda_macro 0.1235"


def test_structure_plot_names_the_space_budget_and_share_of_dense(tiny, tmp_path: Path) -> None:
    from automl_hiap.cost import dense_cost, subnet_cost
    from automl_hiap.plots import describe_model, layer_macs, structure_plot, structure_title
    from automl_hiap.subnet import LayerKeep, Subnet

    _, _, space = tiny
    dense = Subnet.dense(space)
    removed = LayerKeep(heads=(), neurons=dense.layers[1].neurons)  # attention branch gone
    subnet = Subnet((dense.layers[0], removed))
    cost, full = subnet_cost(space, subnet), dense_cost(space)
    title = structure_title(
        source="test_vit.yaml",
        strategy="magnitude",
        budget="0.5",
        macs=cost.macs,
        dense_macs=full.macs,
        model=describe_model(space, 16),
    )
    assert title.startswith("test_vit.yaml · magnitude · budget 0.5\n")
    assert f"= {cost.macs / full.macs:.1%} of dense" in title
    assert "2-layer ViT, width 32, 2 heads, 17 tokens, 16 px" in title
    pairs = zip(space.layers, subnet.layers, strict=True)
    per_layer = [layer_macs(shape, space.tokens, keep) for shape, keep in pairs]
    assert per_layer[1].attn == 0
    blocks = sum(m.attn + m.ffn for m in per_layer)
    assert blocks + space.fixed_macs == cost.macs  # the panel adds up to the model's MACs
    path = structure_plot(space, subnet, tmp_path / "s.png", title=title)
    assert path.stat().st_size > 10_000


def test_the_tune_plot_shows_what_trials_explored_when_the_front_is_a_point() -> None:
    import matplotlib.pyplot as plt

    from automl_hiap.tune.results import TuneReport, pareto_figure

    rows = [
        {
            "trial": n,
            "state": "COMPLETE" if n != 3 else "PRUNED",
            "params": {"finetune_lr": 10 ** (-4 + n / 3), "hard": n % 2 == 0},
            "val_top1": 0.5 + n / 100,
            "macs": None if n == 3 else 1_000_000,
            "cost": None if n == 3 else 1_000_000,
            "feasible": None if n == 3 else True,
        }
        for n in range(6)
    ]
    report = TuneReport(
        out=Path("."),
        study="same-macs",
        storage="x",
        pareto=True,
        target=1e6,
        tolerance=0.03,
        params=["finetune_lr", "hard"],
        rows=rows,
        front=[5],
        best=rows[5],
    )
    fig = pareto_figure(report)
    try:
        panels = [ax for ax in fig.axes if ax.get_xlabel() in ("finetune_lr", "hard")]
        assert [ax.get_xlabel() for ax in panels] == ["finetune_lr", "hard"]
        for ax in panels:  # every trial is a point, the pruned one too
            shown = sum(len(c.get_offsets()) for c in ax.collections)
            assert shown >= len(rows)
        assert panels[0].get_xscale() == "log"
        assert [t.get_text() for t in panels[1].get_xticklabels()] == ["False", "True"]
        notes = " ".join(t.get_text() for t in fig.axes[0].texts)
        assert "all 5 trials exported 1M MACs" in notes
    finally:
        plt.close(fig)


def test_readme_quickstart_command_is_what_bench_quickstart_runs() -> None:
    sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))
    try:
        import quickstart
    finally:
        sys.path.pop(0)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    command = quickstart.readme_command(readme)
    assert command[:2] == ["automl_hiap", "search"] and "digits.yaml" in command
    assert " ".join(command) in readme
