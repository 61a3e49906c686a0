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


COMMANDS = {"spaces": cmd_spaces, "strategies": cmd_strategies, "inspect": cmd_inspect}


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
