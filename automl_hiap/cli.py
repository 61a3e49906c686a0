"""The ``automl_hiap`` command: a handful of subcommands; everything else lives in the YAML."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from automl_hiap import preview
from automl_hiap.atomic import check_folder
from automl_hiap.errors import UserError

if TYPE_CHECKING:
    from automl_hiap.budget import Budget


def _add_space_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--space", required=True, help="a bundled space name (deit_small.yaml) or a path"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a key of the space file (repeatable), e.g. --set train.batch_size=64",
    )


def add_tracking_args(parser: argparse.ArgumentParser) -> None:
    """MLflow flags shared by the commands that track (search, tune)."""
    parser.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (overrides MLFLOW_TRACKING_URI and tracking.uri; "
        "default sqlite:///mlflow.db)",
    )
    parser.add_argument(
        "--register", metavar="NAME", help="register the exported model under NAME in MLflow"
    )
    parser.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="automl_hiap",
        description="Structured pruning of timm Vision Transformers as architecture search.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("spaces", help="list the bundled search spaces")
    commands.add_parser("strategies", help="list the installed strategies")
    inspect = commands.add_parser(
        "inspect", help="show a space: per-layer units, dense MACs/params, prunable shares"
    )
    _add_space_args(inspect)
    search = commands.add_parser(
        "search", help="search a subnet, export it, evaluate it on the test split, measure it"
    )
    _add_space_args(search)
    search.add_argument("--strategy", help="a strategy name (default: the file's strategy.name)")
    search.add_argument(
        "--budget",
        help="fraction of dense MACs (0.5), absolute MACs (2.3G) or latency at batch 1 (8ms)",
    )
    search.add_argument("--out", default="runs/search", help="output folder (default: %(default)s)")
    search.add_argument(
        "--no-measure",
        action="store_true",
        help="skip the speed measurement of dense vs pruned (speed fields of metrics.json null)",
    )
    search.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars: plain log lines only (no carriage returns), e.g. for CI",
    )
    add_tracking_args(search)
    tune = commands.add_parser(
        "tune",
        help="Optuna outer loop: tune the strategy's params (the file's tune: section)",
        description="Each trial is one search into OUT/trials/<n>/. Budget mode maximizes val "
        "top-1 with the exported MACs within tune.tolerance of the budget; trials report val "
        "top-1 per epoch and the pruner stops hopeless ones. Run the same command again to "
        "resume. OUT gets trials.csv, tune.json, pareto.png and the best trial's model; MLflow "
        "gets a parent run per study and a child run per trial (--register: the best's model).",
    )
    _add_space_args(tune)
    tune.add_argument("--strategy", help="a strategy name (default: the file's strategy.name)")
    tune.add_argument("--budget", help="fraction of dense MACs (0.5) or absolute MACs (2.3G)")
    tune.add_argument("--trials", type=_positive, help="trials in the study (default: tune.trials)")
    tune.add_argument(
        "--storage",
        help="study storage: a database URL (postgresql://user@host/db, sqlite:///x.db) or a "
        "file (.db: SQLite, .journal: shared by local workers); default: OUT/study.db "
        "(OUT/study.journal with --workers > 1)",
    )
    tune.add_argument("--study", help="study name (default: model-strategy-budget)")
    tune.add_argument(
        "--workers", type=_positive, help="worker processes on this machine (default: 1)"
    )
    tune.add_argument(
        "--pareto",
        action="store_true",
        help="two objectives (val top-1 up, MACs down) and report the front; no pruning: "
        "Optuna cannot prune multi-objective studies",
    )
    tune.add_argument("--out", default="runs/tune", help="output folder (default: %(default)s)")
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_tracking_args(tune)
    evaluate = commands.add_parser(
        "evaluate", help="re-measure an exported model: test top-1 and throughput"
    )
    evaluate.add_argument("folder", help="a search's output folder or its model/ folder")
    _add_space_args(evaluate)
    profile = commands.add_parser(
        "profile",
        help="measure this machine's latency table for a space (for budgets like --budget 8ms)",
    )
    _add_space_args(profile)
    profile.add_argument("--out", required=True, help="the table file to write (JSON)")
    profile.add_argument("--batch", type=_positive, default=1, help="batch size (default: 1)")
    profile.add_argument("--threads", type=_positive, help="CPU threads (default: torch's)")
    profile.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    profile.add_argument("--points", type=_positive, default=5, help="grid points per width")
    profile.add_argument("--repeats", type=_positive, default=5, help="interleaved repeats")
    source_help = "an export folder, a .safetensors export, or models:/NAME@alias, runs:/ID/model"
    pull = commands.add_parser("pull", help="write a registered or logged model's files")
    pull.add_argument("source", help=source_help)
    pull.add_argument("--out", required=True, help="folder for arch.json + model.safetensors")
    pull.add_argument("--tracking-uri", help="MLflow store of the URI (default: as for search)")
    export = commands.add_parser(
        "export", help="write ONNX / TorchScript / one-file safetensors, checked against eager"
    )
    export.add_argument("source", help=source_help)
    export.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    export.add_argument("--out", help="file to write (default: SOURCE/exports/model.EXT)")
    export.add_argument("--tracking-uri", help="MLflow store of the URI (default: as for search)")
    return parser


def cmd_spaces(args: argparse.Namespace) -> None:
    """Read from the YAML files alone: no model is built, torch is not imported."""
    from automl_hiap.listing import space_entries

    for entry in space_entries():
        print("\n".join(entry.lines()))


def cmd_strategies(args: argparse.Namespace) -> None:
    """Read from the strategies' source files when it can (see ``listing``): no torch."""
    from automl_hiap.listing import strategy_entries

    for entry in strategy_entries():
        print(entry.line())


def cmd_inspect(args: argparse.Namespace) -> None:
    from automl_hiap.config import load_config
    from automl_hiap.report import describe_space

    config = load_config(args.space, args.overrides)
    print(describe_space(config))


def _budget(args: argparse.Namespace) -> Budget | None:
    """The --budget flag, parsed (one-line error naming the flag)."""
    from automl_hiap.budget import parse_budget

    if args.budget is None:
        return None
    try:
        return parse_budget(args.budget)
    except ValueError as exc:
        raise UserError(f"--budget: {exc}") from None


def cmd_search(args: argparse.Namespace) -> None:
    from automl_hiap.config import load_config, verify_model_name
    from automl_hiap.console import Console

    config = load_config(args.space, args.overrides, check_model=False)  # no torch yet
    budget = _budget(args)
    if config.tune is not None:  # a tune: section makes search the outer loop
        _run_tune(args, config, budget, {})
        return
    console = Console(bars=not args.no_progress)
    preview.show_plan(console, "search", args, config, budget)  # before seconds of imports
    check_folder(args.out, "--out")  # before any run is opened or anything computed
    from automl_hiap.tracking.reach import preflight  # no MLflow in it

    preflight(config.tracking, args.tracking_uri, not args.no_tracking)  # before MLflow loads
    verify_model_name(config, args.space)
    console.info("loading torch, timm and MLflow ...")
    from automl_hiap.distributed import is_main_process
    from automl_hiap.search import run_search, summary
    from automl_hiap.tracking import open_tracker

    tracker = open_tracker(  # checks the store now, before any compute
        config.tracking, args.tracking_uri, args.register, not args.no_tracking, args.out
    )
    options: dict[str, Any] = {
        "progress": not args.no_progress,
        "console": console,
        "source": args.space,
        **({"measure_batch": None} if args.no_measure else {}),
    }
    version = None
    if tracker is None:
        report = run_search(config, args.out, args.strategy, budget, **options)
    else:
        with tracker.search_run(config, args.out, args.strategy, budget) as run:
            report = run_search(config, args.out, args.strategy, budget, listeners=[run], **options)
            version = run.log_search(report, config)
    if is_main_process():
        console.heading("summary")
        print(summary(report))
        print()
        print("\n".join(preview.output_lines(Path(args.out))))
        if tracker is not None:
            again = " (logged in full by an earlier attempt: nothing logged again)"
            print(f"\nMLflow run {run.id} at {tracker.uri}" + (again if run.done else ""))
            if tracker.uri.startswith("sqlite:///"):
                print(f"   browse: mlflow ui --backend-store-uri {tracker.uri}")
            if version is not None:
                aliases = f" (aliases: {', '.join(version.aliases)})" if version.aliases else ""
                print(f"registered model {version.name} version {version.version}{aliases}")


def _run_tune(args: argparse.Namespace, config: Any, budget: Any, flags: dict[str, Any]) -> None:
    from automl_hiap.config import verify_model_name
    from automl_hiap.console import Console

    if config.tune is not None:
        trials = flags.get("trials") or config.tune.trials
        mode = "Pareto front" if flags.get("pareto") or config.tune.pareto else "budget mode"
        params = ", ".join(config.tune.params)
        extra = {"tune": f"{trials} trials, {mode}, tuning {params}"}
        preview.show_plan(Console(bars=False), "tune", args, config, budget, extra)
    check_folder(args.out, "--out")  # before the study or any run is opened
    from automl_hiap.tracking.reach import preflight  # no MLflow in it

    preflight(config.tracking, args.tracking_uri, not args.no_tracking)  # before MLflow loads
    verify_model_name(config, args.space)  # imports timm: after the plan is on screen
    from automl_hiap.distributed import is_main_process
    from automl_hiap.errors import ConfigError
    from automl_hiap.tracking import open_tracker
    from automl_hiap.tune import run_tune
    from automl_hiap.tune.results import summary

    if config.tune is None:
        raise ConfigError(
            f"{args.space}: tune: missing section; add tune.params (the fields to tune and "
            "their ranges), e.g. --set 'tune.params.finetune_lr={low: 1e-5, high: 1e-3, log: true}'"
        )
    updates = {key: value for key, value in flags.items() if value not in (None, False)}
    settings = config.tune.model_copy(update=updates)
    tracker = open_tracker(  # checks the store now, before any compute
        config.tracking, args.tracking_uri, args.register, not args.no_tracking, args.out
    )
    hooks = None
    if tracker is not None:
        from automl_hiap.tune.tracking import TrackingHooks

        hooks = TrackingHooks(tracker)
    report = run_tune(
        config,
        args.out,
        strategy_name=args.strategy,
        budget=budget,
        tune=settings,
        source=args.space,
        hooks=hooks,
        progress=not args.no_progress,
    )
    if report is not None and is_main_process():
        print(summary(report))
        if hooks is not None and tracker is not None:
            print(f"\nMLflow study run {hooks.study_run_id} at {tracker.uri}")
            for note in hooks.notes:
                print(f"note: {note}")
            version = hooks.registered
            if version is not None and report.best is not None:
                aliases = f", aliases: {', '.join(version.aliases)}" if version.aliases else ""
                print(
                    f"registered model {version.name} version {version.version} "
                    f"(trial {report.best['trial']}{aliases})"
                )


def cmd_tune(args: argparse.Namespace) -> None:
    from automl_hiap.config import load_config

    config = load_config(args.space, args.overrides, check_model=False)  # no torch yet
    budget = _budget(args)
    flags = {
        "trials": args.trials,
        "storage": args.storage,
        "study": args.study,
        "workers": args.workers,
        "pareto": args.pareto,
    }
    _run_tune(args, config, budget, flags)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from automl_hiap.config import load_config
    from automl_hiap.search import evaluate_export

    folder = Path(args.folder)
    folder = folder / "model" if (folder / "model").is_dir() else folder
    result = evaluate_export(folder, load_config(args.space, args.overrides))
    low, high = result["images_per_s_iqr"]
    load = result["load_average"]
    print(
        f"top-1 {result['top1']:.2%}   {result['images_per_s']:.1f} img/s (median of "
        f"{result['repeats']} interleaved repeats, IQR {low:.1f}–{high:.1f}; batch "
        f"{result['batch']}" + ("" if load is None else f"; load average {load:.1f}") + ")"
    )


def cmd_profile(args: argparse.Namespace) -> None:
    from automl_hiap.budget import Latency
    from automl_hiap.config import load_config
    from automl_hiap.latency import LatencyModel
    from automl_hiap.latency_table import profile
    from automl_hiap.models import ModelSpec
    from automl_hiap.space import SearchSpace
    from automl_hiap.subnet import Subnet

    config = load_config(args.space, args.overrides)
    model = ModelSpec(config.model.name, dict(config.model.kwargs)).create()  # timing only
    space = SearchSpace.from_model(model, config.space.units, config.space.constraints)
    settings = Latency(batch=args.batch, threads=args.threads, dtype=args.dtype)
    table = profile(
        model, space, settings, config.data.image_size, args.points, args.repeats, say=print
    )
    table.write(args.out)
    predicted = LatencyModel(table, space).predict(space, Subnet.dense(space)) * 1e3
    low, high = table.dense_iqr_ms
    fit = ", ".join(
        f"{table.fixed_ms + table.in_model * alone:.3g}/{measured:.3g}"
        for alone, measured in table.calibration
    )
    print(
        f"wrote {args.out}: fixed part {table.fixed_ms:.3g} ms; dense model predicted "
        f"{predicted:.3g} ms, measured {table.dense_ms:.3g} ms (IQR {low:.3g}–{high:.3g}); "
        f"in-model factor {table.in_model:.3g} fitted on the dense model and "
        f"{len(table.calibration) - 1} random subnets (predicted/measured ms: {fit})"
    )
    where = f"batch: {args.batch}"  # the settings the table is keyed by, so a search matches
    where += "" if args.threads is None else f", threads: {args.threads}"
    where += "" if args.dtype == "float32" else f", dtype: {args.dtype}"
    example = f"{0.7 * predicted:.3g}ms"  # within the reachable range
    print(f"use it: --set 'budget={{latency: {example}, {where}, table: {args.out}}}'")


def cmd_pull(args: argparse.Namespace) -> None:
    from automl_hiap.tracking.reach import check_server, is_uri, resolve_uri

    check_folder(args.out, "--out")  # both checked again by pull(), after torch loads
    if is_uri(args.source) and not Path(args.source).exists():
        try:
            check_server(resolve_uri(flag=args.tracking_uri))
        except UserError as exc:
            raise UserError(f"{args.source}: {exc}") from None
    from automl_hiap.tracking.pull import pull

    out = pull(args.source, args.out, args.tracking_uri)
    print(f"{args.source} -> {out}")


def cmd_export(args: argparse.Namespace) -> None:
    from pathlib import Path

    from automl_hiap.export_formats import FORMATS, TOLERANCE, export_to
    from automl_hiap.sources import load
    from automl_hiap.tracking.pull import is_uri

    out = args.out
    if out is None:
        base = Path(".") if is_uri(args.source) else Path(args.source)
        base = base.parent if base.is_file() else base
        out = base / "exports" / f"model{FORMATS[args.format]}"
    diff = export_to(load(args.source, args.tracking_uri), args.format, out)
    print(
        f"wrote {out} ({args.format}; max |logit difference| vs eager {diff:.2g} <= {TOLERANCE:g})"
    )


COMMANDS = {
    "spaces": cmd_spaces,
    "strategies": cmd_strategies,
    "inspect": cmd_inspect,
    "search": cmd_search,
    "evaluate": cmd_evaluate,
    "tune": cmd_tune,
    "profile": cmd_profile,
    "pull": cmd_pull,
    "export": cmd_export,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except UserError as exc:
        for line in str(exc).splitlines():
            print(f"automl_hiap: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("automl_hiap: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
