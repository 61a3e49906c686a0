"""One search, end to end: model + data + strategy -> exported, evaluated, measured model.

The output folder holds everything a user needs and everything a resumed run reuses::

    OUT/subnet.json            the decision (kept indices per unit)
    OUT/model/arch.json        architecture of the exported model
    OUT/model/model.safetensors  its weights
    OUT/metrics.json           dense vs pruned: top-1, MACs, params, measured speed-up
    OUT/structure.png          kept heads / dims / neurons per layer
    OUT/checkpoints/*.pt       per-phase training state (a killed search resumes from here)
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from automl_hiap.atomic import check_folder
from automl_hiap.budget import Budget, format_macs
from automl_hiap.config import SearchConfig
from automl_hiap.console import Console
from automl_hiap.cost import subnet_cost
from automl_hiap.cost_model import CostModel
from automl_hiap.distributed import is_main_process
from automl_hiap.errors import UserError
from automl_hiap.measure import Measurement, Spread, measure
from automl_hiap.model_files import save
from automl_hiap.outcome import ModelMetrics, SearchMetrics, SearchReport
from automl_hiap.placement import Placement
from automl_hiap.plan import resolve
from automl_hiap.plots import describe_model, structure_plot, structure_title
from automl_hiap.space import SearchSpace
from automl_hiap.strategy import SearchContext
from automl_hiap.subnet import Subnet
from automl_hiap.trainer import EpochListener, Trainer

if TYPE_CHECKING:
    from automl_hiap.data.datasets import DataSplits

Scores = dict[str, dict[str, float]]  # split -> {"top1", "loss"}
# the least an output folder needs free: a float32 checkpoint with AdamW's two moments, plus the
# export; checked before any compute (a write that fails later still fails in one line)
BYTES_PER_PARAM = 4 * 3 + 4


def matching_data(config: SearchConfig, model: nn.Module) -> DataSplits:
    """The datasets of ``config``; one line when the model predicts another number of classes
    than the data has (before any training)."""
    from automl_hiap.data import build_datasets

    data = build_datasets(config.data, seed=config.train.seed)
    classes = getattr(model, "num_classes", None)
    if classes is not None and classes != data.num_classes:
        raise UserError(
            f"{config.where('model.kwargs.num_classes')}: the model predicts {classes} classes, "
            f"the data has {data.num_classes}"
        )
    return data


def run_search(
    config: SearchConfig,
    out: str | Path,
    strategy_name: str | None = None,
    budget: Budget | None = None,
    progress: bool = True,
    measure_batch: int | None = 64,
    listeners: Sequence[EpochListener] = (),
    dense_scores: MutableMapping[str, Scores] | None = None,
    console: Console | None = None,
    source: str = "",
    placement: Placement | None = None,
) -> SearchReport:
    """Search, export, evaluate on the test split, measure, and write the output folder.

    ``listeners`` hear every training epoch of every phase (trackers, the tuner's pruner).
    ``measure_batch=None`` skips the speed measurement (speed fields are then null): the tuner
    does so for trials when asked, since it costs seconds per trial on tiny models.
    Both models are also scored on the held-out val split (``val_top1``): selection (the
    tuner's objective) must not see the test split.
    ``dense_scores`` is a cache shared by the searches of one process (the tuner's trials): the
    dense model is then scored once, not once per trial, which on CPU is a large part of a
    short trial. It is keyed by :func:`reference_key`, so a trial that changes the weights or
    the data splits scores its own dense model.
    ``console`` prints phase headings, epoch records and results (default: with bars when
    ``progress``, else nothing; the CLI passes ``Console(bars=False)`` for ``--no-progress``).
    ``source`` names the space file in ``structure.png``'s title.
    ``placement`` overrides where it computes (default: ``train.device`` and its settings); the
    trainer owns it, and the model, teacher, batches and measurement all follow it.
    """

    out = Path(out)
    say = console if console is not None else Console(bars=True) if progress else Console.silent()
    say.heading("model and data")
    plan = resolve(config, strategy_name, budget)
    config, model, space, dense = plan.config, plan.model, plan.space, plan.dense
    strategy, spec, target = plan.strategy, plan.spec, plan.target
    check_folder(out, "--out", need_bytes=BYTES_PER_PARAM * dense.params)
    data = matching_data(config, model)
    sizes = (len(data.train), len(data.val), len(data.test))  # type: ignore[arg-type]
    say.info(
        f"{config.model.name}: {format_macs(dense.macs)} MACs, {dense.params / 1e6:.3f} M params"
        + ("" if target is None else f"; target {plan.cost.describe(target)}")
    )
    say.info(
        f"{config.data.format} data: {sizes[0]} train / {sizes[1]} val / {sizes[2]} test "
        f"images, {data.num_classes} classes, {config.data.image_size} px"
    )

    trainer = Trainer(
        config.train,
        data.train,
        data.val,
        checkpoint_dir=out / "checkpoints",
        device=placement,
        progress=progress,
    )
    trainer.placement.module(model)  # scores, gates and phases all compute on its device
    trainer.console = say  # phase headings
    trainer.listeners.extend([say, *listeners])  # the console first: its line is printed
    if not plan.has_weights:
        if config.train.dense_epochs == 0:
            raise UserError(
                f"{config.where('model.checkpoint')}: the model has no weights; give a "
                "checkpoint, set model.pretrained, or train.dense_epochs to train it first"
            )
        trainer.fit(model, config.train.dense_epochs, phase="dense")
    dense_model = copy.deepcopy(model).eval()  # the reference, and the distillation teacher
    teacher = dense_model if config.train.distill is not None else None
    trainer.teacher = teacher
    dense_scores = {} if dense_scores is None else dense_scores
    key = reference_key(model, config)
    if key not in dense_scores:
        say.heading("evaluation of the dense model (test and val splits)")
        with torch.random.fork_rng(devices=[]):  # a cache hit must leave the RNGs as a miss
            dense_scores[key] = {
                "test": trainer.evaluate(model, data.test),
                "val": trainer.evaluate(model),
            }
    dense_test, dense_val = dense_scores[key]["test"], dense_scores[key]["val"]
    say.info(f"dense: test top-1 {dense_test['top1']:.2%}, val top-1 {dense_val['top1']:.2%}")

    context = SearchContext(
        model=model,
        spec=spec,
        space=space,
        target=target,
        seed=config.train.seed,
        trainer=trainer,
        teacher=teacher,
        cost=plan.cost,
    )
    declared = strategy.fine_tune
    tune_epochs = 0 if declared is None else getattr(strategy.params, declared.epochs, 0) or 0
    fine_tune = declared.phase if declared is not None and tune_epochs else None
    if fine_tune is not None:
        say.label(fine_tune, "fine-tune of the sliced model")
    aim = "" if target is None else f" to {plan.cost.describe(target)}"
    say.heading(
        f"search: {strategy.name}{aim}, then slicing" + (" and fine-tune" if fine_tune else "")
    )
    started = time.perf_counter()
    result = strategy.run(context)
    search_seconds = time.perf_counter() - started
    subnet, pruned = result.subnet, result.model.eval()
    cost = subnet_cost(space, subnet)
    say.info(
        f"subnet: {format_macs(cost.macs)} MACs ({cost.macs / dense.macs:.1%} of dense), "
        f"{cost.params / 1e6:.3f} M params; search {search_seconds:.1f} s"
    )
    say.heading("evaluation of the pruned model (test and val splits)")
    pruned_test = trainer.evaluate(pruned, data.test)
    pruned_val = trainer.evaluate(pruned)
    say.info(f"pruned: test top-1 {pruned_test['top1']:.2%}, val top-1 {pruned_val['top1']:.2%}")

    timed: Measurement | None = None
    if measure_batch is not None:
        say.heading(f"measurement: images/s of both models at batch {measure_batch}")
        timed = measure(
            {"dense": dense_model, "pruned": pruned},
            config.data.image_size,
            measure_batch,
            placement=trainer.placement,
        )
        say.info(speed_line(timed))
    latency = latency_record(
        plan.cost, space, subnet, {"pruned": pruned, "dense": dense_model}, target, config
    )
    if latency is not None:
        for line in SearchMetrics.latency_lines_of(latency):
            say.info(line)
    dense_speed = pruned_speed = speedup = None
    if timed is not None:
        dense_speed, pruned_speed = timed.images_per_s("dense"), timed.images_per_s("pruned")
        speedup = timed.speedup("pruned", "dense")
    metrics = SearchMetrics(
        strategy=strategy.name,
        params_config=strategy.params.model_dump(),
        budget=None if config.budget is None else str(config.budget),
        target_macs=target if plan.cost.unit == "MACs" else None,  # a latency's: ``latency``
        dense=ModelMetrics(
            dense_test["top1"], dense_val["top1"], dense.macs, dense.params, *_spread(dense_speed)
        ),
        pruned=ModelMetrics(
            pruned_test["top1"], pruned_val["top1"], cost.macs, cost.params, *_spread(pruned_speed)
        ),
        macs_ratio=cost.macs / dense.macs,
        speedup=None if speedup is None else speedup.median,
        speedup_iqr=_spread(speedup)[1],
        measure_repeats=None if speedup is None else speedup.repeats,
        load_average=None if timed is None else timed.load_average,
        latency=latency,
        measure_batch=measure_batch,
        search_seconds=search_seconds,
        strategy_metrics=result.metrics,
        structure=subnet.describe(),
    )
    if is_main_process():
        say.heading(f"export to {out}")
        out.mkdir(parents=True, exist_ok=True)
        subnet.save(out / "subnet.json")
        save(pruned, out / "model")
        metrics.write(out / "metrics.json")
        title = structure_title(
            source=source,
            strategy=strategy.name,
            budget=metrics.budget,
            macs=cost.macs,
            dense_macs=dense.macs,
            model=describe_model(space, config.data.image_size),
        )
        structure_plot(space, subnet, out / "structure.png", title=title)
        say.info(
            "wrote subnet.json, model/ (arch.json, model.safetensors), metrics.json, structure.png"
        )
    return SearchReport(out=out, subnet=subnet, metrics=metrics)


def _spread(spread: Spread | None) -> tuple[float | None, list[float] | None]:
    """(median, [low, high]) of a measured figure, as metrics.json stores it."""
    return (None, None) if spread is None else (spread.median, [spread.low, spread.high])


def speed_line(timed: Measurement) -> str:
    """Dense vs pruned images/s and the paired speed-up, each with its interquartile range."""
    load = "" if timed.load_average is None else f"; load average {timed.load_average:.1f}"
    return (
        f"dense {timed.images_per_s('dense').describe(1)} img/s, pruned "
        f"{timed.images_per_s('pruned').describe(1)} img/s: speed-up "
        f"{timed.speedup('pruned', 'dense').describe()}x{load}"
    )


def latency_record(
    cost: CostModel,
    space: SearchSpace,
    subnet: Subnet,
    models: dict[str, nn.Module],
    target: float | None,
    config: SearchConfig,
) -> dict[str, Any] | None:
    """For a latency budget: the exported model's predicted latency and its measured one
    (median and interquartile range), where the table was measured (batch, threads, dtype).
    The dense model is timed in the same run: when the machine runs faster or slower than
    when it was profiled, its dense figures show by how much."""
    from automl_hiap.latency import LatencyModel
    from automl_hiap.latency_table import measure_latency

    if not isinstance(cost, LatencyModel) or target is None:
        return None
    key = cost.table.key
    measured = measure_latency(models, key, config.data.image_size)
    pruned, dense = measured["pruned"], measured["dense"]
    return {
        "target_ms": target * 1e3,
        "predicted_ms": cost.predict(space, subnet) * 1e3,
        "measured_ms": pruned.median,
        "measured_iqr_ms": [pruned.low, pruned.high],
        "dense_predicted_ms": cost.predict(space, Subnet.dense(space)) * 1e3,
        "dense_measured_ms": dense.median,
        "repeats": pruned.repeats,
        "batch": key.batch,
        "threads": key.threads,
        "dtype": key.dtype,
        "device": key.device,
    }


def reference_key(model: nn.Module, config: SearchConfig) -> str:
    """What the dense model's scores depend on: its weights and config, and the data splits."""
    digest = hashlib.sha256()
    settings = [config.model.model_dump(mode="json"), config.data.model_dump(mode="json")]
    digest.update(json.dumps([*settings, config.train.seed], sort_keys=True).encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def evaluate_export(folder: str | Path, config: SearchConfig, batch: int = 64) -> dict[str, Any]:
    """Re-measure an exported model: test top-1 and throughput (median of interleaved
    repeats after warm-up, with its interquartile range)."""
    from automl_hiap.data import build_datasets
    from automl_hiap.model_files import load

    model: nn.Module = load(folder)
    data = build_datasets(config.data, seed=config.train.seed)
    trainer = Trainer(config.train, data.train, data.val)
    top1 = trainer.evaluate(model, data.test)["top1"]
    timed = measure({"pruned": model}, config.data.image_size, batch, placement=trainer.placement)
    speed = timed.images_per_s("pruned")
    return {
        "top1": top1,
        "images_per_s": speed.median,
        "images_per_s_iqr": [speed.low, speed.high],
        "repeats": speed.repeats,
        "load_average": timed.load_average,
        "batch": batch,
    }


def summary(report: SearchReport) -> str:
    """The lines the CLI prints after a search."""
    m = report.metrics
    d, p = m.dense, m.pruned

    def speed(model: ModelMetrics) -> str:
        if model.images_per_s is None:
            return f"{'-':>9s}"
        iqr = (
            ""
            if model.images_per_s_iqr is None
            else "  IQR {:.1f}–{:.1f}".format(*model.images_per_s_iqr)
        )
        return f"{model.images_per_s:9.1f}{iqr}"

    if m.speedup is None:
        measured = "speed not measured"
    else:
        iqr = "" if m.speedup_iqr is None else " (IQR {:.2f}–{:.2f}x".format(*m.speedup_iqr)
        repeats = "" if not iqr else f", {m.measure_repeats} repeats)"
        measured = f"measured speed-up {m.speedup:.2f}x{iqr}{repeats} at batch {m.measure_batch}"
    lines = [
        f"strategy {m.strategy}   budget {m.budget}   output {report.out}",
        f"{'':8s} {'top-1':>8s} {'MACs':>10s} {'params':>10s} {'img/s':>9s}",
        f"{'dense':8s} {d.top1:8.2%} {format_macs(d.macs):>10s} {d.params / 1e6:9.3f}M {speed(d)}",
        f"{'pruned':8s} {p.top1:8.2%} {format_macs(p.macs):>10s} {p.params / 1e6:9.3f}M {speed(p)}",
        f"MACs {m.macs_ratio:.1%} of dense, {measured}",
        *m.latency_lines(),
        "",
        "layer  heads  q/k dims per head        v dims per head          neurons",
    ]
    for i, layer in enumerate(m.structure):
        lines.append(
            f"{i:5d}  {layer['heads']:5d}  {layer['qk_dims']!s:24s} "
            f"{layer['v_dims']!s:24s} {layer['neurons']:7d}"
        )
    return "\n".join(lines)
