"""The ``automl_hiap`` command: a handful of subcommands; everything else lives in the YAML."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from automl_hiap.errors import UserError


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
    search.add_argument("--budget", help="fraction of dense MACs (0.5) or absolute MACs (2.3G)")
    search.add_argument("--out", default="runs/search", help="output folder (default: %(default)s)")
    search.add_argument("--no-progress", action="store_true", help="no progress bars")
    evaluate = commands.add_parser(
        "evaluate", help="re-measure an exported model: test top-1 and throughput"
    )
    evaluate.add_argument("folder", help="a search's output folder or its model/ folder")
    _add_space_args(evaluate)
    return parser


def cmd_spaces(args: argparse.Namespace) -> None:
    from automl_hiap.config import bundled_spaces, load_config

    for name in bundled_spaces():
        try:
            config = load_config(name)
            summary = f"{config.model.name}  data={config.data.format}"
        except UserError as exc:  # e.g. a checkpoint this machine does not have
            summary = f"(not loadable here: {str(exc).splitlines()[0]})"
        print(f"{name:28s} {summary}")


def cmd_strategies(args: argparse.Namespace) -> None:
    from automl_hiap import registry

    for name, cls in registry.available().items():
        print(f"{name:12s} {cls.description}")


def cmd_inspect(args: argparse.Namespace) -> None:
    from automl_hiap.config import load_config
    from automl_hiap.report import describe_space

    config = load_config(args.space, args.overrides)
    print(describe_space(config))


def cmd_search(args: argparse.Namespace) -> None:
    from automl_hiap.budget import parse_budget
    from automl_hiap.config import load_config
    from automl_hiap.search import run_search, summary
    from automl_hiap.trainer import is_main_process

    config = load_config(args.space, args.overrides)
    budget = None
    if args.budget is not None:
        try:
            budget = parse_budget(args.budget)
        except ValueError as exc:
            raise UserError(f"--budget: {exc}") from None
    report = run_search(config, args.out, args.strategy, budget, progress=not args.no_progress)
    if is_main_process():
        print(summary(report))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from automl_hiap.config import load_config
    from automl_hiap.search import evaluate_export

    folder = Path(args.folder)
    folder = folder / "model" if (folder / "model").is_dir() else folder
    result = evaluate_export(folder, load_config(args.space, args.overrides))
    print(
        f"top-1 {result['top1']:.2%}   {result['images_per_s']:.1f} img/s (batch {result['batch']})"
    )


COMMANDS = {
    "spaces": cmd_spaces,
    "strategies": cmd_strategies,
    "inspect": cmd_inspect,
    "search": cmd_search,
    "evaluate": cmd_evaluate,
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
