"""How many Optuna trials it takes to land a strategy on a MACs budget, next to its single run.

What: for each budget (default 67 % and 50 % of the dense MACs) on the CIFAR-10 reference space
(``vit_tiny6_cifar10.yaml``), run the tune in budget mode (val top-1 up, exported MACs within
``tune.tolerance`` of the target) and, beside it, one plain search with the strategy's params
as the file gives them (the strategy's own single-run budget mode). Per budget the table gives:
trials run, the trials needed until the first feasible one and until the best one, the best
trial's distance to the target and its val / test top-1, and the single run's distance and
top-1.

Why: a differentiable method steers MACs through loss weights and temperatures; the question
users ask is what it takes to land on *their* budget. The single run shows how close the
method's defaults get; the tune shows how many trials close the rest of the gap, and at what
accuracy.

The tuned fields come from the space's ``tune:`` section or ``--set tune.params.X=...``
(YAML values), e.g. for HiAP's loss weight and temperature::

    python bench/tune_budget.py --strategy hiap --trials 20 \\
        --set 'tune.params.lambda_macro={low: 0.1, high: 10, log: true}' \\
        --set 'tune.params.tau_end={low: 0.2, high: 1.0}'

Smoke run (tiny synthetic space, two trials, results outside the repository)::

    python bench/tune_budget.py --space test_vit.yaml --strategy magnitude --trials 2 \\
        --set strategy.params.finetune_epochs=1 --set tune.measure=false \\
        --set 'tune.params.finetune_lr={low: 1e-4, high: 1e-2, log: true}' \\
        --out /tmp/tune_smoke --results /tmp/tune_smoke

Writes ``RESULTS/tune_budget.json`` (settings, environment, per-budget figures and every trial)
and ``RESULTS/tune_budget.md`` (the table). Run again with the same ``--out`` to resume the
studies (finished budgets are not recomputed: their studies already hold the trials).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from automl_hiap.budget import Budget, format_macs
from automl_hiap.config import load_config
from automl_hiap.errors import UserError
from automl_hiap.search import run_search
from automl_hiap.tune import TuneReport, run_tune

DEFAULT_RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="vit_tiny6_cifar10.yaml", help="search space (name/path)")
    p.add_argument("--strategy", default="hiap", help="strategy to tune (default: hiap)")
    p.add_argument("--budgets", nargs="+", type=float, default=[0.67, 0.5])
    p.add_argument("--trials", type=int, default=20, help="trials per budget")
    p.add_argument("--workers", type=int, default=1, help="tune worker processes")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    p.add_argument(
        "--single-set",
        dest="single_overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="overrides for the single run only (e.g. strategy.params.adapt_lambda=true)",
    )
    p.add_argument("--out", type=Path, default=Path("runs/bench_tune"), help="run folders")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="where results go")
    p.add_argument("--no-single", action="store_true", help="skip the single-run baseline")
    return p.parse_args(argv)


def trials_needed(report: TuneReport) -> dict[str, int | None]:
    """Trials run (in trial order) until the first feasible one, and until the best one."""
    order = [r for r in report.rows if r["retried_as"] is None]  # a retried trial counts once
    first = next((i + 1 for i, r in enumerate(order) if r["feasible"]), None)
    best = report.best
    until_best = None
    if best is not None:
        until_best = next(i + 1 for i, r in enumerate(order) if r["trial"] == best["trial"])
    return {"until_first_feasible": first, "until_best": until_best}


def bench_budget(args: argparse.Namespace, fraction: float) -> dict[str, Any]:
    config = load_config(args.space, args.overrides)
    if config.tune is None:
        raise UserError(
            "tune.params: nothing to tune; give the ranges with --set 'tune.params.X={...}'"
        )
    tune = config.tune.model_copy(update={"trials": args.trials, "workers": args.workers})
    budget = Budget(fraction, absolute=False)
    folder = args.out / f"budget_{fraction:g}"
    start = time.perf_counter()
    report = run_tune(
        config,
        folder / "tune",
        strategy_name=args.strategy,
        budget=budget,
        tune=tune,
        source=args.space,
        progress=False,
    )
    assert report is not None  # not under torchrun
    tune_s = time.perf_counter() - start
    best = report.best
    row: dict[str, Any] = {
        "budget": fraction,
        "target_macs": report.target_macs,
        "tolerance": report.tolerance,
        "trials": len([r for r in report.rows if r["state"] != "WAITING"]),
        "completed": sum(r["state"] == "COMPLETE" for r in report.rows),
        "pruned": sum(r["state"] == "PRUNED" for r in report.rows),
        "failed": sum(r["state"] == "FAIL" for r in report.rows),
        **trials_needed(report),
        "best_trial": None if best is None else best["trial"],
        "best_params": None if best is None else best["params"],
        "best_feasible": None if best is None else best["feasible"],
        "best_distance": report.distance,
        "best_val_top1": None if best is None else best["val_top1"],
        "best_test_top1": None if best is None else best["test_top1"],
        "best_macs": None if best is None else best["macs"],
        "tune_minutes": tune_s / 60,
        "notes": report.notes,
        "trial_rows": report.rows,
    }
    if not args.no_single:
        start = time.perf_counter()
        single_config = load_config(args.space, [*args.overrides, *args.single_overrides])
        single = run_search(
            single_config,
            folder / "single",
            args.strategy,
            budget,
            progress=False,
            measure_batch=None,
        )
        pruned, target = single.metrics.pruned, single.metrics.target_macs
        assert target is not None  # a budget was given
        row["single"] = {
            "distance": pruned.macs / target - 1,
            "val_top1": pruned.val_top1,
            "test_top1": pruned.top1,
            "macs": pruned.macs,
            "params": single.metrics.params_config,
            "minutes": (time.perf_counter() - start) / 60,
        }
    return row


def _pct(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2%}" if signed else f"{value:.2%}"


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [
        f"# Tune to a budget: {settings['strategy']} on {settings['space']}",
        "",
        f"`{settings['command']}`",
        "",
        f"{settings['trials']} trials per budget, tolerance ±{rows[0]['tolerance']:.1%} "
        f"(feasible: exported MACs within it); top-1 on the held-out val split selects, the "
        "test split only reports. Single run: one search with the file's params.",
        "",
        "| budget | target MACs | trials (done/pruned/failed) | to first feasible | to best "
        "| best: distance | val top-1 | test top-1 | single run: distance | val top-1 "
        "| test top-1 | tune min |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        single = r.get("single") or {}
        lines.append(
            f"| {r['budget']:g} | {format_macs(r['target_macs'])} "
            f"| {r['trials']} ({r['completed']}/{r['pruned']}/{r['failed']}) "
            f"| {r['until_first_feasible'] or '-'} | {r['until_best'] or '-'} "
            f"| {_pct(r['best_distance'], True)} | {_pct(r['best_val_top1'])} "
            f"| {_pct(r['best_test_top1'])} | {_pct(single.get('distance'), True)} "
            f"| {_pct(single.get('val_top1'))} | {_pct(single.get('test_top1'))} "
            f"| {r['tune_minutes']:.1f} |"
        )
    for r in rows:
        for note in r["notes"]:
            lines.append(f"\nBudget {r['budget']:g}: {note}")
        if r["best_params"]:
            shown = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in r["best_params"].items()
            )
            lines.append(f"\nBudget {r['budget']:g}, best params: {shown}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    command = "python bench/tune_budget.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    try:
        rows = [bench_budget(args, fraction) for fraction in args.budgets]
    except UserError as exc:
        print(f"tune_budget: error: {exc}", file=sys.stderr)
        return 2
    settings = {
        "space": args.space,
        "strategy": args.strategy,
        "trials": args.trials,
        "workers": args.workers,
        "overrides": args.overrides,
        "single_overrides": args.single_overrides,
        "command": command,
    }
    environment = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "cpus": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    payload = {"settings": settings, "environment": environment, "budgets": rows}
    (args.results / "tune_budget.json").write_text(json.dumps(payload, indent=1))
    table = markdown(rows, settings)
    (args.results / "tune_budget.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
