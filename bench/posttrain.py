"""Post-training pruning with no training at all: ``posttrain`` vs Torch-Pruning and magnitude.

On the dense CIFAR-10 reference ViT-Tiny6, for each budget (a fraction of the dense MACs),
every method prunes in one shot and is scored zero-shot on ``--test-images`` images
of the test split, a fixed seed-0 subset (calibration images come from the training split
only):

* dense;
* Torch-Pruning 1.6.1's MetaPruner, global pruning, magnitude (Group-L2) and Taylor importance
  (the Taylor gradients from 8 training batches of 32), via ``bench/peer_torch_pruning.py``;
* this project's ``magnitude`` (one shot, no fine-tuning);
* ``posttrain`` with the true labels and label-free, each without and with rearrangement, each
  without and with reconstruction.

Methods that read calibration data run once per seed (``--seeds``: the calibration subset, the
Taylor batches, the label-free draws) and report mean ± sd. The posttrain variants of one seed
and label mode share one Fisher pass: a variant's time to result is that pass plus its own
stages (selection, rearrangement, reconstruction, slicing). The default configuration is also
run end to end through ``Strategy.run`` (its wall time is the "end to end" column, and its
subnet and top-1 must equal the composed variant's). Speed-ups: every distinct structure (seed
0) against the dense model, batch 64, side by side in one interleaved run
(``automl_hiap.measure.throughput``).

``--sections equal-time`` (the issue's "trained strategies at equal wall time") gives each
trained path, per budget, the wall time ``posttrain``'s defaults took end to end in the same
run: ``magnitude`` with ``--magnitude``'s criterion, and Torch-Pruning global Taylor, each
fine-tuned with the space's training recipe (KD from the dense model) for the steps that fit
in what their pruning left; HiAP for the steps that fit in all of it. Seconds per step are
timed first on the path's first model and converted to steps, so the rows state both. Each
section replaces its own part of the results file and keeps the others.

    python bench/posttrain.py                      # writes bench/results/posttrain.{md,json}
    python bench/posttrain.py --seeds 0 --test-images 500 --calibration-images 500  # quicker
    python bench/posttrain.py --sections equal-time  # the equal-time rows only
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from export_speed import tune_malloc  # beside this script
from peer_torch_pruning import count_macs, prune_with_torch_pruning
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from automl_hiap.config import load_config
from automl_hiap.cost import dense_cost, subnet_cost
from automl_hiap.data import build_datasets
from automl_hiap.measure import throughput
from automl_hiap.plan import resolve
from automl_hiap.selection import select_to_budget
from automl_hiap.slicing import slice_subnet
from automl_hiap.strategies import posttrain as pt
from automl_hiap.strategies.hiap import HiAPParams, HiAPStrategy
from automl_hiap.strategies.magnitude import MagnitudeParams, MagnitudeStrategy
from automl_hiap.strategy import SearchContext
from automl_hiap.trainer import Trainer

SECTIONS = ("zero-shot", "equal-time")
# the best one-shot criterion of bench/results/selection.md, with its chosen variant
MAGNITUDE_PARAMS = {"criterion": "taylor", "normalize": "none", "tradeoff": "per_mac"}


@torch.no_grad()
def top1(model: nn.Module, data: Dataset[Any]) -> float:
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(data, batch_size=500):
        correct += int((model(images).argmax(-1) == labels).sum())
        total += len(labels)
    return correct / total


def test_subset(dataset: Dataset[Any], count: int) -> Subset[Any]:
    """A fixed subset of the test split: the first ``count`` of a seed-0 permutation (the
    split is stored by class; the seed is independent of the methods' seeds)."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))  # type: ignore[arg-type]
    return Subset(dataset, order[:count].tolist())


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its wall seconds."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def taylor_batches(train: Dataset[Any], seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(
        train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    batches = []
    for images, labels in loader:
        batches.append((images, labels))
        if len(batches) == 8:
            break
    return batches


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def variant_name(labels: bool, rearrange: bool, reconstruct: str) -> str:
    parts = ["labels" if labels else "label-free"]
    parts.append("rearranged" if rearrange else "diagonal")
    parts.append("reconstructed" if reconstruct != "none" else "no reconstruction")
    return "posttrain (" + ", ".join(parts) + ")"


@dataclass
class Setting:
    """What every section shares: the dense reference, its space, the data and the test subset."""

    config: Any
    model: nn.Module
    space: Any
    spec: Any
    data: Any
    test: Subset[Any]
    trainer: Trainer  # the whole training split: the methods' calibration data
    dense_top1: float
    dense_macs: float
    size: int


def load_setting(
    space: str, overrides: list[str], test_of: Callable[[Dataset[Any]], Dataset[Any]]
) -> Setting:
    """The dense reference of ``space`` and its data; ``test_of`` picks the fixed test set."""
    config = load_config(space, overrides)
    plan = resolve(config, check_budget=False)
    data = build_datasets(config.data, seed=config.train.seed)
    setting = Setting(
        config=config,
        model=plan.model.eval(),
        space=plan.space,
        spec=plan.spec,
        data=data,
        test=test_of(data.test),  # type: ignore[arg-type]
        trainer=Trainer(config.train, data.train, device="cpu"),
        dense_top1=0.0,
        dense_macs=dense_cost(plan.space).macs,
        size=config.data.image_size,
    )
    setting.dense_top1 = top1(setting.model, setting.test)
    return setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="vit_tiny6_cifar10.yaml")
    parser.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.67])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--calibration-images", type=int, default=2000)
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=SECTIONS,
        default=["zero-shot"],
        help="what to run; the results file keeps the sections not run",
    )
    parser.add_argument(
        "--magnitude",
        default=json.dumps(MAGNITUDE_PARAMS),
        help="JSON: magnitude's params on the equal-time rows (bench/results/selection.md's best)",
    )
    parser.add_argument("--probe-steps", type=int, default=3, help="steps timed per method")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    malloc_tuned = tune_malloc()  # as bench/export_speed.py: no page-faulting per forward

    setting = load_setting(
        args.space, args.overrides, lambda test: test_subset(test, args.test_images)
    )
    print(
        f"dense: {setting.dense_top1:.2%} on {len(setting.test)} test images, "
        f"{setting.dense_macs / 1e6:.1f} M MACs"
    )
    path = args.out / "posttrain.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    machine = {
        "threads": torch.get_num_threads(),
        "malloc_tuned": malloc_tuned,
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "commit": _commit(),
    }
    if "zero-shot" in args.sections:
        results.update(zero_shot(setting, args, machine))
    args.out.mkdir(parents=True, exist_ok=True)
    if "equal-time" in args.sections:
        for section in equal_time(setting, args, machine, results.get("equal_time", {})):
            results["equal_time"] = section
            write(args.out, results)
    print(write(args.out, results))


def write(out: Path, results: dict[str, Any]) -> str:
    """posttrain.{json,md} from ``results`` (either section may be missing); the markdown."""
    text = markdown(results["rows"], results["setup"]) if "rows" in results else ""
    if "equal_time" in results:
        section = results["equal_time"]
        text += ("\n" if text else "") + equal_time_markdown(section["rows"], section["setup"])
    (out / "posttrain.md").write_text(text)
    (out / "posttrain.json").write_text(json.dumps(results, indent=1))
    return text


def zero_shot(s: Setting, args: argparse.Namespace, machine: dict[str, Any]) -> dict[str, Any]:
    """Every method in one shot, no training: the rows, their runs and the setup."""
    load_before = os.getloadavg()
    model, space, spec, data, trainer = s.model, s.space, s.spec, s.data, s.trainer
    dense_macs, size = s.dense_macs, s.size
    runs: list[dict[str, Any]] = []  # one entry per (method, budget, seed)
    speed_models: dict[str, nn.Module] = {"dense": model}

    def record(
        method: str,
        budget: float,
        seed: int | None,
        pruned: nn.Module,
        macs: float,
        seconds: float,
        structure: str | None = None,
        **extra: Any,
    ) -> None:
        """One result; its model joins the speed run once per distinct structure (seed 0)."""
        accuracy = top1(pruned, s.test)
        structure = structure or f"{method} @ {budget:g}"
        runs.append(
            {
                "method": method,
                "budget": budget,
                "seed": seed,
                "top1": accuracy,
                "macs": macs,
                "seconds": seconds,
                "structure": structure,
                **extra,
            }
        )
        if seed in (None, args.seeds[0]) and structure not in speed_models:
            speed_models[structure] = pruned.eval()
        print(
            f"{method} @ {budget:g} seed {seed}: {accuracy:.2%}, "
            f"{macs / dense_macs:.1%} MACs, {seconds:.0f} s",
            flush=True,
        )

    for budget in args.budgets:
        target = budget * dense_macs
        example = torch.randn(1, 3, size, size)
        pruned, seconds = timed(
            prune_with_torch_pruning, model, example, target, "magnitude", global_pruning=True
        )
        record("Torch-Pruning global magnitude", budget, None, pruned, count_macs(pruned), seconds)
        for seed in args.seeds:
            batches = taylor_batches(data.train, seed)
            pruned, seconds = timed(
                prune_with_torch_pruning,
                model,
                example,
                target,
                "taylor",
                batches,
                global_pruning=True,
            )
            record("Torch-Pruning global Taylor", budget, seed, pruned, count_macs(pruned), seconds)
        context = SearchContext(copy.deepcopy(model), spec, space, target, seed=0)
        result, seconds = timed(MagnitudeStrategy().run, context)
        record(
            "magnitude (one shot)",
            budget,
            None,
            result.model,
            subnet_cost(space, result.subnet).macs,
            seconds,
        )

    # posttrain: one Fisher pass per (seed, label mode), every variant from it
    defaults = pt.PostTrainParams(calibration_images=args.calibration_images)
    cpu = torch.device("cpu")
    composed: dict[tuple[float, int], tuple[Any, float]] = {}
    for seed in args.seeds:
        for labels in (True, False):
            loader = pt.calibration_loader(
                data.train, args.calibration_images, defaults.batch_size, seed
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                calibration, fisher_seconds = timed(
                    pt.collect_fisher, model, space, loader, labels, seed, True, cpu
                )
            scores = pt.fisher_scores(space, calibration)
            for budget in args.budgets:
                subnet, select_seconds = timed(select_to_budget, space, scores, budget * dense_macs)
                (moved, swaps), rearrange_seconds = timed(
                    pt.rearrange, space, subnet, calibration, defaults.max_swaps
                )
                for rearranged, chosen in ((False, subnet), (True, moved)):
                    for mode in ("none", "weights"):
                        weights = copy.deepcopy(model)
                        report, recon_seconds = timed(
                            pt.reconstruct,
                            weights,
                            space,
                            chosen,
                            calibration,
                            mode,
                            defaults.damping,
                            defaults.batch_size,
                        )
                        pruned, slice_seconds = timed(slice_subnet, weights, chosen, spec)
                        seconds = fisher_seconds + select_seconds + recon_seconds + slice_seconds
                        seconds += rearrange_seconds if rearranged else 0.0
                        name = variant_name(labels, rearranged, mode)
                        metrics = report.metrics()
                        record(
                            name,
                            budget,
                            seed,
                            pruned,
                            subnet_cost(space, chosen).macs,
                            seconds,
                            f"posttrain subnet {hash(chosen)}",
                            swaps=swaps if rearranged else 0,
                            fisher_seconds=fisher_seconds,
                            refit_error_ratio=metrics["posttrain_refit_error_ratio"],
                            damped_systems=metrics["posttrain_damped_systems"],
                        )
                        if labels and not rearranged and mode == defaults.reconstruct:
                            composed[(budget, seed)] = (chosen, runs[-1]["top1"])

    # the default configuration end to end, as `automl_hiap search` runs it
    end_to_end: dict[float, dict[str, Any]] = {}
    seed = args.seeds[0]
    for budget in args.budgets:
        context = SearchContext(
            copy.deepcopy(model), spec, space, budget * dense_macs, seed=seed, trainer=trainer
        )
        result, seconds = timed(pt.PostTrainStrategy(defaults).run, context)
        accuracy = top1(result.model, s.test)
        subnet, expected = composed[(budget, seed)]
        same = result.subnet == subnet and abs(accuracy - expected) < 1e-9
        if not same:
            print("warning: the end-to-end run differs from the composed stages", flush=True)
        end_to_end[budget] = {
            "seconds": seconds,
            "top1": accuracy,
            "metrics": result.metrics,
            "equals_composed": same,
        }
        print(f"posttrain end to end @ {budget:g}: {accuracy:.2%} in {seconds:.0f} s", flush=True)

    speeds = throughput(speed_models, size, 64, repeats=15, min_seconds=0.5)
    rows = summarize(runs, speeds, s.dense_top1, dense_macs, end_to_end, args)
    load_after = os.getloadavg()
    setup = {
        "space": args.space,
        "dense_top1": s.dense_top1,
        "dense_macs": dense_macs,
        "test_images": len(s.test),
        "calibration_images": args.calibration_images,
        "seeds": args.seeds,
        "params": defaults.model_dump(),
        **machine,
        "load_average_before_after": [load_before[0], load_after[0]],
    }
    return {"setup": setup, "rows": rows, "runs": runs}


class OverBudget(Exception):
    """A path's pruning ran past the wall-time budget."""


def within(seconds: float, fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``fn(*args)`` and its wall seconds, or (None, ``seconds``) when it runs past
    ``seconds``: it is stopped then, since at equal wall time a path without a model by the
    deadline has none (and waiting for it would only lengthen the benchmark)."""

    def stop(signum: int, frame: Any) -> None:
        raise OverBudget

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        return timed(fn, *args)
    except OverBudget:
        return None, seconds
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def finetune_trainer(s: Setting, steps: int, seed: int) -> Trainer:
    """A trainer whose one epoch is ``steps`` steps of the space's recipe (its batch, lr,
    weight decay, warm-up + cosine schedule, KD from the dense model when ``train.distill`` is
    set) on a seeded subset of the training split: a step budget through the project's loop."""
    config = s.config.train.model_copy(update={"seed": seed})
    order = torch.randperm(len(s.data.train), generator=torch.Generator().manual_seed(seed))
    images = Subset(s.data.train, order[: steps * config.batch_size].tolist())
    teacher = s.model if config.distill is not None else None
    return Trainer(config, images, device="cpu", teacher=teacher)


def fine_tune(s: Setting, pruned: nn.Module, steps: int, seed: int) -> float:
    """Train ``pruned`` in place for ``steps`` steps; its wall seconds (0 steps: untouched)."""
    if steps == 0:
        return 0.0
    trainer = finetune_trainer(s, steps, seed)
    return timed(trainer.fit, pruned, 1, "equal_time_finetune")[1]


HIAP_RUNS = Path("/tmp/automl_hiap_hiap_runs")  # searches kept for the benches that share them


def hiap_run(s: Setting, budget: float, seed: int, steps: int, **params: Any) -> Any:
    """HiAP's one stage (gates and weights together, then hardening, repair and slicing) over
    ``steps`` steps of the same recipe, end to end through ``Strategy.run``; ``params``
    override HiAP's defaults. A finished search is kept in ``HIAP_RUNS`` under a key of all it
    depends on (the config, budget, seed, steps, params and the project's source), so the
    benches that need the same search (transplant's two schedules, the HiAP ablation) run it
    once; one under way in another process is waited for."""
    hiap = HiAPParams(epochs=1, **params)
    file = HIAP_RUNS / f"{_hiap_key(s, budget, seed, steps, hiap)}.pt"
    lock = file.with_suffix(".lock")
    HIAP_RUNS.mkdir(parents=True, exist_ok=True)
    while not file.is_file():
        try:
            with lock.open("x") as owner:  # atomic: one process searches, the others wait
                owner.write(str(os.getpid()))
        except FileExistsError:
            if not _alive(lock):
                lock.unlink(missing_ok=True)  # its process died: search here
            time.sleep(5)
            continue
        try:
            context = SearchContext(
                copy.deepcopy(s.model),
                s.spec,
                s.space,
                budget * s.dense_macs,
                seed=seed,
                trainer=finetune_trainer(s, steps, seed),
            )
            result = HiAPStrategy(hiap).run(context)
            partial_file = file.with_suffix(".part")
            torch.save(result, partial_file)
            partial_file.replace(file)
            return result
        finally:
            lock.unlink(missing_ok=True)
    return torch.load(file, weights_only=False)


def _hiap_key(s: Setting, budget: float, seed: int, steps: int, params: HiAPParams) -> str:
    import hashlib

    import automl_hiap
    from automl_hiap.strategies import hiap

    digest = hashlib.sha256()
    for folder in (Path(automl_hiap.__file__).parent, Path(hiap.__file__).parent):
        for source in sorted(folder.glob("*.py")):
            digest.update(source.read_bytes())
    digest.update(Path(__file__).read_bytes())  # finetune_trainer: the search's recipe
    setup = {
        "config": s.config.model_dump(mode="json"),
        "run": [budget, seed, steps, params.model_dump(mode="json"), torch.__version__],
    }
    digest.update(json.dumps(setup, sort_keys=True, default=str).encode())
    return f"b{budget:g}_s{seed}_n{steps}_{digest.hexdigest()[:16]}"


def _alive(lock: Path) -> bool:
    """Whether the process named in ``lock`` still runs (an unreadable lock counts as alive:
    it is being written)."""
    try:
        os.kill(int(lock.read_text()), 0)
    except ValueError:
        return True
    except (ProcessLookupError, FileNotFoundError):
        return False
    return True


def equal_time(
    s: Setting, args: argparse.Namespace, machine: dict[str, Any], previous: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The equal-time section after each budget (written as it comes: a long run under load
    keeps what it finished); ``previous``'s runs of the budgets not run here stay."""
    magnitude = MagnitudeParams.model_validate(json.loads(args.magnitude))
    defaults = pt.PostTrainParams(calibration_images=args.calibration_images)
    runs = [r for r in previous.get("runs", []) if r["budget"] not in args.budgets]
    budgets = dict(previous.get("setup", {}).get("budgets", {}))
    for budget in args.budgets:
        load_before = os.getloadavg()
        mine, probes = equal_time_budget(s, args, budget, magnitude, defaults)
        runs += mine
        budgets[f"{budget:g}"] = {
            "budget_seconds": mine[0]["budget_seconds"],
            "seconds_per_step": probes,
            "load_average_before_after": [load_before[0], os.getloadavg()[0]],
            "commit": machine["commit"],
        }
        setup = {
            "space": args.space,
            "dense_top1": s.dense_top1,
            "dense_macs": s.dense_macs,
            "test_images": len(s.test),
            "seeds": args.seeds,
            "posttrain_params": defaults.model_dump(),
            "magnitude_params": magnitude.model_dump(),
            "train": s.config.train.model_dump(),
            "probe_steps": args.probe_steps,
            **machine,
            "budgets": budgets,
        }
        yield {"setup": setup, "rows": equal_time_rows(runs, s.dense_macs), "runs": runs}


def equal_time_budget(
    s: Setting,
    args: argparse.Namespace,
    budget: float,
    magnitude: MagnitudeParams,
    defaults: pt.PostTrainParams,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One budget's runs, and the seconds per step each trained path was converted with.

    ``posttrain`` runs first (every seed, ``Strategy.run``); the mean of its wall times is the
    budget. A prune-then-fine-tune path spends what its pruning left of it on fine-tuning
    steps, converted with its first model's time per step (``--probe-steps`` steps timed
    first, not counted); HiAP spends all of it on its one stage, converted the same way from
    a run of that many steps.
    """
    runs: list[dict[str, Any]] = []
    probes: dict[str, float] = {}  # method -> seconds per step

    def record(method: str, budget: float, seed: int, pruned: nn.Module, **extra: Any) -> None:
        accuracy = top1(pruned, s.test)
        runs.append({"method": method, "budget": budget, "seed": seed, "top1": accuracy, **extra})
        print(
            f"{method} @ {budget:g} seed {seed}: {accuracy:.2%} after {extra['steps']} steps, "
            f"{extra['seconds']:.0f} s",
            flush=True,
        )

    target = budget * s.dense_macs
    spent = []
    for seed in args.seeds:
        context = SearchContext(
            copy.deepcopy(s.model), s.spec, s.space, target, seed=seed, trainer=s.trainer
        )
        result, seconds = timed(pt.PostTrainStrategy(defaults).run, context)
        spent.append(seconds)
        macs = subnet_cost(s.space, result.subnet).macs
        record(
            "posttrain (defaults)",
            budget,
            seed,
            result.model,
            macs=macs,
            steps=0,
            prune_seconds=seconds,
            finetune_seconds=0.0,
            seconds=seconds,
            budget_seconds=None,  # set below: the mean over seeds
        )
    allowed = statistics.fmean(spent)
    for run in runs:
        run["budget_seconds"] = allowed

    paths: list[tuple[str, Callable[[Setting, float, int], tuple[nn.Module, float]]]] = [
        (f"magnitude ({magnitude.criterion}) + fine-tune", partial(ours, params=magnitude)),
        ("Torch-Pruning global Taylor + fine-tune", peer),
    ]
    for method, prune in paths:
        for seed in args.seeds:
            pruned_macs, prune_seconds = within(allowed, prune, s, target, seed)
            if pruned_macs is None:  # no model within the budget: nothing to score
                runs.append(
                    {
                        "method": method,
                        "budget": budget,
                        "seed": seed,
                        "top1": None,
                        "macs": None,
                        "steps": 0,
                        "prune_seconds": prune_seconds,
                        "finetune_seconds": 0.0,
                        "seconds": prune_seconds,
                        "budget_seconds": allowed,
                    }
                )
                print(f"{method} @ {budget:g} seed {seed}: over budget", flush=True)
                continue
            pruned, macs = pruned_macs
            key = method
            if key not in probes:  # the first model's time per step, not counted
                probe = fine_tune(s, copy.deepcopy(pruned), args.probe_steps, seed)
                probes[key] = probe / args.probe_steps
            step = probes[key]
            before = top1(pruned, s.test)
            steps = max(0, math.floor((allowed - prune_seconds) / step))
            finetune_seconds = fine_tune(s, pruned, steps, seed)
            record(
                method,
                budget,
                seed,
                pruned,
                macs=macs,
                top1_before=before,
                steps=steps,
                step_seconds=step,
                prune_seconds=prune_seconds,
                finetune_seconds=finetune_seconds,
                seconds=prune_seconds + finetune_seconds,
                budget_seconds=allowed,
            )

    probe = timed(hiap_run, s, budget, args.seeds[0], args.probe_steps)[1]
    step = probes["hiap"] = probe / args.probe_steps
    steps = math.floor(allowed / step)
    for seed in args.seeds:
        result, seconds = timed(hiap_run, s, budget, seed, steps)
        record(
            "hiap (one stage, no fine-tuning)",
            budget,
            seed,
            result.model,
            macs=subnet_cost(s.space, result.subnet).macs,
            steps=steps,
            step_seconds=step,
            prune_seconds=seconds,
            finetune_seconds=0.0,
            seconds=seconds,
            budget_seconds=allowed,
            repaired_units=result.metrics.get("repaired_units"),
        )

    return runs, probes


def equal_time_rows(runs: list[dict[str, Any]], dense_macs: float) -> list[dict[str, Any]]:
    """Mean ± sd per (method, budget) over the seeds that had a model within the budget."""
    rows = []
    for budget in sorted({r["budget"] for r in runs}):
        methods = dict.fromkeys(r["method"] for r in runs if r["budget"] == budget)
        for method in methods:
            mine = [r for r in runs if r["method"] == method and r["budget"] == budget]
            done = [r for r in mine if r["top1"] is not None]  # with a model in the budget
            mean, sd = mean_sd([r["top1"] for r in done]) if done else (None, None)
            row = {
                "method": method,
                "budget": budget,
                "top1_mean": mean,
                "top1_sd": sd,
                "top1_per_seed": [r["top1"] for r in mine],
                "seeds": len(done),
                "runs": len(mine),
                "macs_ratio": (
                    statistics.fmean(r["macs"] for r in done) / dense_macs if done else None
                ),
                "steps": [r["steps"] for r in mine],
                "step_seconds": next((r.get("step_seconds") for r in done), None),
                "prune_seconds": statistics.fmean(r["prune_seconds"] for r in mine),
                "seconds": statistics.fmean(r["seconds"] for r in mine),
                "budget_seconds": mine[0]["budget_seconds"],
            }
            if done and "top1_before" in done[0]:
                row["top1_before_mean"] = statistics.fmean(r["top1_before"] for r in done)
            rows.append(row)
    return rows


def ours(s: Setting, target: float, seed: int, params: MagnitudeParams) -> tuple[nn.Module, float]:
    """This project's one-shot selection (``magnitude``, end to end): the sliced model, MACs."""
    context = SearchContext(
        copy.deepcopy(s.model), s.spec, s.space, target, seed=seed, trainer=s.trainer
    )
    result = MagnitudeStrategy(params).run(context)
    return result.model, subnet_cost(s.space, result.subnet).macs


def peer(s: Setting, target: float, seed: int) -> tuple[nn.Module, float]:
    """Torch-Pruning's global Taylor pruning as in the zero-shot rows: the model, its MACs."""
    example = torch.randn(1, 3, s.size, s.size)
    batches = taylor_batches(s.data.train, seed)
    pruned = prune_with_torch_pruning(
        s.model, example, target, "taylor", batches, global_pruning=True
    )
    return pruned, count_macs(pruned)


def summarize(
    runs: list[dict[str, Any]],
    speeds: dict[str, float],
    dense_top1: float,
    dense_macs: float,
    end_to_end: dict[float, dict[str, Any]],
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    rows = [
        {
            "method": "dense",
            "budget": 1.0,
            "top1_mean": dense_top1,
            "top1_sd": 0.0,
            "seeds": 1,
            "macs_ratio": 1.0,
            "speedup": 1.0,
            "seconds": 0.0,
        }
    ]
    for budget in args.budgets:
        methods = dict.fromkeys(r["method"] for r in runs if r["budget"] == budget)
        for method in methods:
            mine = [r for r in runs if r["method"] == method and r["budget"] == budget]
            mean, sd = mean_sd([r["top1"] for r in mine])
            key = mine[0]["structure"]  # seed 0's (the one measured)
            row = {
                "method": method,
                "budget": budget,
                "top1_mean": mean,
                "top1_sd": sd,
                "top1_per_seed": [r["top1"] for r in mine],
                "seeds": len(mine),
                "macs_ratio": statistics.fmean(r["macs"] for r in mine) / dense_macs,
                "speedup": speeds[key] / speeds["dense"] if key in speeds else None,
                "seconds": statistics.fmean(r["seconds"] for r in mine),
            }
            if method == variant_name(True, False, "weights") and budget in end_to_end:
                row["end_to_end_seconds"] = end_to_end[budget]["seconds"]
            rows.append(row)
    return rows


def markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    lines = [
        f"{setup['space']}: zero-shot top-1 on {setup['test_images']} test images (a fixed "
        "seed-0 subset) "
        f"(dense {setup['dense_top1']:.2%}, {setup['dense_macs'] / 1e6:.1f} M MACs); "
        f"posttrain: {setup['calibration_images']} calibration images from the training split, "
        f"seeds {setup['seeds']} (calibration subsets; mean ± sd), params {setup['params']}; "
        f"{setup['machine']}, torch {setup['torch']}, {setup['threads']} threads, a shared "
        f"machine (load average {setup['load_average_before_after'][0]:.1f} at the start, "
        f"{setup['load_average_before_after'][1]:.1f} at the end); commit {setup['commit']}. "
        "Time to result: pruning to the budget (posttrain: its Fisher pass + selection "
        "[+ rearrangement] [+ reconstruction] + slicing; end to end: `Strategy.run`). "
        "Speed-up: batch 64, every distinct structure (seed 0) against the dense model, side by "
        "side in one interleaved run (reconstruction does not change a structure), glibc "
        "malloc thresholds as in bench/export_speed.py.",
        "",
        "| method | budget | top-1 | vs dense | MACs | speed-up | time to result |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    dense = rows[0]["top1_mean"]
    for r in rows:
        spread = f" ± {r['top1_sd']:.2%}" if r["seeds"] > 1 else ""
        speed = "—" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        seconds = f"{r['seconds']:.0f} s" if r["method"] != "dense" else "—"
        if "end_to_end_seconds" in r:
            seconds += f" ({r['end_to_end_seconds']:.0f} s end to end)"
        lines.append(
            f"| {r['method']} | {r['budget']:g} | {r['top1_mean']:.2%}{spread} | "
            f"{r['top1_mean'] - dense:+.2%} | {r['macs_ratio']:.1%} | {speed} | {seconds} |"
        )
    return "\n".join(lines) + "\n"


def equal_time_markdown(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    train = setup["train"]
    distill = train["distill"]
    kd = (
        f"KD from the dense model (α {distill['alpha']:g}, T {distill['temperature']:g})"
        if distill
        else "no KD"
    )
    loads = "; ".join(
        f"budget {budget}: load average {b['load_average_before_after'][0]:.1f} at the start, "
        f"{b['load_average_before_after'][1]:.1f} at the end, commit {b['commit']}"
        for budget, b in setup["budgets"].items()
    )
    lines = [
        "## Equal wall time",
        "",
        f"The trained paths with the wall time `posttrain`'s defaults took end to end in the "
        f"same run (per budget, the mean over seeds {setup['seeds']}; {setup['test_images']} "
        f"test images as above). Fine-tuning: the Trainer's recipe of the space, batch "
        f"{train['batch_size']}, AdamW lr {train['lr']:g}, weight decay "
        f"{train['weight_decay']:g}, label smoothing {train['label_smoothing']:g}, {kd}, cosine "
        "to zero over the steps that fit: (budget − that seed's pruning time) / the first "
        f"model's seconds per step ({setup['probe_steps']} steps timed first, not counted); a "
        "pruning still running at the budget is stopped (no model in the budget). Steps "
        "that ran slower than their probe (the load changed) overran the budget: the last "
        "column says by how much. "
        f"HiAP (defaults, one epoch of that many steps) spends the whole budget on its one "
        f"stage. magnitude params {setup['magnitude_params']}. Wall time was measured on "
        f"{setup['threads']} threads of a machine shared with other work, under that load "
        f"({loads}), so seconds per step and the steps they buy vary with it; "
        f"{setup['machine']}, torch {setup['torch']}.",
        "",
        "| method | budget | top-1 | vs dense | before training | MACs | steps | s / step "
        "| pruning | wall time (budget) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    dense = setup["dense_top1"]
    for r in rows:
        before = f"{r['top1_before_mean']:.2%}" if "top1_before_mean" in r else "—"
        steps = "/".join(str(n) for n in r["steps"]) if any(r["steps"]) else "0"
        step = "—" if r["step_seconds"] is None else f"{r['step_seconds']:.2f} s"
        if r["top1_mean"] is None:
            score = f"no model in the budget ({r['runs']} of {r['runs']} seeds)"
            delta = macs = "—"
        else:
            spread = f" ± {r['top1_sd']:.2%}" if r["seeds"] > 1 else ""
            missing = r["runs"] - r["seeds"]
            spread += f" ({missing} of {r['runs']} seeds over budget)" if missing else ""
            score, delta = f"{r['top1_mean']:.2%}{spread}", f"{r['top1_mean'] - dense:+.2%}"
            macs = f"{r['macs_ratio']:.1%}"
        lines.append(
            f"| {r['method']} | {r['budget']:g} | {score} | {delta} | {before} | {macs} | "
            f"{steps} | {step} | {r['prune_seconds']:.0f} s | {r['seconds']:.0f} s "
            f"({r['budget_seconds']:.0f} s) |"
        )
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
