"""What a command prints around its work: the plan before any heavy import, and where
everything went after it. Torch-free, so the plan is on screen within a second."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from automl_hiap.budget import Budget


OUTPUT_FILES = (  # what search writes, in the order a user reads it
    ("metrics.json", "dense vs pruned: test/val top-1, MACs, params, images/s, structure"),
    ("structure.png", "MACs and kept units per layer"),
    ("model", "the exported model: automl_hiap.load({model!r})"),
    ("subnet.json", "the decision: kept indices per layer"),
    ("checkpoints", "per-phase training state: the same command resumes from it"),
    ("mlflow_run.json", "this search's MLflow run (a resumed search continues it)"),
)


def output_lines(out: Path) -> list[str]:
    """Where everything went: the files of the output folder, each with what it holds."""
    lines = [f"output folder {out}:"]
    for name, what in OUTPUT_FILES:
        path = out / name
        if path.exists():
            shown = name + ("/" if path.is_dir() else "")
            lines.append(f"   {shown:17s} {what.format(model=str(out / 'model'))}")
    return lines


def tracking_target(args: argparse.Namespace, config: Any) -> str:
    """Where MLflow will log, as ``tracking.store.resolve_uri`` decides it (a test checks they
    agree), without importing MLflow for it."""
    if args.no_tracking or not config.tracking.enabled:
        return "off"
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or config.tracking.uri
    return f"MLflow, {uri or 'sqlite:///mlflow.db'}"


def show_plan(
    console: Any,
    command: str,
    args: argparse.Namespace,
    config: Any,
    budget: Budget | None,
    extra: dict[str, str] | None = None,
) -> None:
    """One block saying what the command is about to do, printed before any heavy work."""
    from automl_hiap.config import resolve_space_path

    model, data, train = config.model, config.data, config.train
    kwargs = ", ".join(f"{k}={v}" for k, v in model.kwargs.items())
    if model.checkpoint is not None:
        weights = f"weights from {model.checkpoint}"
    elif model.pretrained:
        weights = "timm's pretrained weights (Hugging Face hub)"
    else:
        weights = f"no weights: trains {train.dense_epochs} dense epochs first"
    where = f" from {data.root}" if data.root else ""
    space_file = resolve_space_path(args.space)
    bundled = "" if Path(args.space).is_file() else " (bundled)"
    units = ", ".join(str(u) for u in config.space.units)
    budget = budget if budget is not None else config.budget
    if budget is None:
        aim = "none"
    elif budget.latency is not None:
        aim = f"{budget} per forward pass at batch {budget.latency.batch}"
    elif budget.absolute:
        aim = f"{budget} MACs"
    else:
        aim = f"{budget.value:g} of the dense MACs"
    strategy = args.strategy or config.strategy.name
    params = ", ".join(f"{k}={v}" for k, v in config.strategy.params.items())
    out = Path(args.out)
    resume = " (resumes its checkpoints)" if (out / "checkpoints").is_dir() else ""
    rows = {
        "model": f"{model.name}" + (f" ({kwargs})" if kwargs else "") + f"; {weights}",
        "data": f"{data.format}{where}, {data.image_size} px, val {data.val_fraction:g} of train",
        "space": f"{args.space}{bundled}: {units}",
        "budget": aim + (" (--budget)" if args.budget else ""),
        "strategy": strategy + (f" ({params})" if params else ""),
        "out": f"{out}{resume}",
        "tracking": tracking_target(args, config),
        **(extra or {}),
    }
    if bundled:
        rows["space"] += f" [{space_file}]"
    console.block(rows, title=f"automl_hiap {command}: {args.space} -> {out}")
