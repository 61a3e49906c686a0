"""Train and evaluate loops shared by every strategy.

One :meth:`Trainer.fit` call is one *phase* (HiAP's search, SERo's exploration, its
re-optimization, a fine-tuning run ...), with a fresh AdamW and a fresh warm-up + cosine
schedule, and the strategy's :class:`~automl_hiap.strategy.TrainHooks` called at fixed points.

Exact resume: at the end of every epoch the phase's state (model, optimizer, scheduler, hook
state, RNG states, counters) is written atomically to ``<checkpoint_dir>/<phase>.pt``. The
shuffle order of an epoch depends only on (seed, epoch), so a run killed at any point and
restarted redoes the interrupted epoch exactly as the uninterrupted run did. A finished phase is
not trained again: its final state is loaded. A non-finite loss stops the run with a clear
error; the last good checkpoint stays intact.

Data parallel under ``torchrun`` (gloo on CPU, NCCL on GPU): each process sees a disjoint shard
of every global batch; gradients of the model (DDP) and of the hooks' extra parameters (an
explicit all-reduce) are averaged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from automl_hiap.atomic import atomic_path
from automl_hiap.config import TrainConfig
from automl_hiap.distributed import (
    average_gradients,
    init_distributed,
    is_distributed,
    is_main_process,
)
from automl_hiap.errors import UserError
from automl_hiap.loading import EpochOrder, SeededItems, Shard, device_batches, loader_settings
from automl_hiap.placement import MAP_LOCATION, Placement
from automl_hiap.recipe import distillation_loss, parameter_groups, warmup_cosine
from automl_hiap.strategy import TrainHooks
from automl_hiap.subnet import Subnet
from automl_hiap.tensor_files import read_checkpoint


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclass
class EpochEnd:
    """What listeners hear after every epoch: trackers log it, the outer loop prunes on it."""

    phase: str
    epoch: int  # 1-based, the epoch just finished
    epochs: int
    metrics: dict[str, float]  # train_loss, train_top1, val_top1, val_loss, strategy metrics
    candidate: Subnet | None  # the strategy's current decision, if it has one


EpochListener = Callable[[EpochEnd], None]


@dataclass
class FitResult:
    epochs_run: int
    resumed: bool
    last_metrics: dict[str, float]


def _rng_state() -> dict[str, Any]:
    """Every RNG, as tensors and plain values (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def atomic_save(obj: Any, path: Path) -> None:
    """Write to a temporary file, then rename: a kill never leaves a half-written checkpoint."""
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


class Trainer:
    """Runs phases of training for strategies; owns data loading, checkpoints and devices."""

    def __init__(
        self,
        config: TrainConfig,
        train_data: Dataset,
        val_data: Dataset | None = None,
        checkpoint_dir: str | Path | None = None,
        teacher: nn.Module | None = None,
        device: torch.device | str | Placement | None = None,
        progress: bool = False,
    ) -> None:
        self.config = config
        self.train_data = train_data
        self.val_data = val_data
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        # the one place that decides devices: `device` (or train.device), AMP, compile, pinning
        placement = device if isinstance(device, Placement) else Placement.resolve(config, device)
        self.placement = placement
        init_distributed(placement.device)  # joins the process group under torchrun
        self.teacher = teacher  # moved to the device (a property: also when set later)
        self._loaders: dict[Any, DataLoader] = {}  # loaders with persistent workers
        self._scaler: torch.amp.GradScaler | None = None  # the phase's fp16 loss scaler
        self.progress = progress and is_main_process()
        world = dist.get_world_size() if is_distributed() else 1
        if config.batch_size % world:
            raise UserError(
                f"train.batch_size: {config.batch_size} is not divisible by {world} processes"
            )
        self.local_batch = config.batch_size // world
        # called on the main process after each epoch's checkpoint is written; an exception
        # raised by one (e.g. optuna.TrialPruned) stops the phase, the checkpoint stays
        self.listeners: list[EpochListener] = []
        # prints each phase's heading (automl_hiap.console.Console, set by run_search)
        self.console: Any = None

    @property
    def device(self) -> torch.device:
        """The device this run computes on (``placement.device``)."""
        return self.placement.device

    @property
    def teacher(self) -> nn.Module | None:
        """The distillation teacher, in eval mode on the device."""
        return self._teacher

    @teacher.setter
    def teacher(self, model: nn.Module | None) -> None:
        self._teacher = None if model is None else self.placement.module(model).eval()

    # ------------------------------------------------------------------ data
    def _loader(self, epoch: int) -> DataLoader:
        """The epoch's batches; the order depends only on (seed, epoch)."""
        if self.config.num_workers > 0:
            return self._worker_loader(epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        if is_distributed():
            sampler: Any = DistributedSampler(
                self.train_data, seed=self.config.seed, drop_last=True
            )
            sampler.set_epoch(epoch)
        else:
            sampler = RandomSampler(self.train_data, generator=generator)  # type: ignore[arg-type]
        return DataLoader(
            self.train_data,
            batch_size=self.local_batch,
            sampler=sampler,
            drop_last=True,
            num_workers=self.config.num_workers,
            generator=generator,
            pin_memory=self.placement.pin_memory,
        )

    def _worker_loader(self, epoch: int) -> DataLoader:
        """With workers: one loader for the trainer's life (persistent workers) whose order
        and per-item augmentation seeds depend only on (seed, epoch) (``automl_hiap.loading``)."""
        loader = self._loaders.get("train")
        if loader is None:
            world = dist.get_world_size() if is_distributed() else 1
            rank = dist.get_rank() if is_distributed() else 0
            order = EpochOrder(len(self.train_data), self.config.seed, rank, world)  # type: ignore[arg-type]
            loader = DataLoader(
                SeededItems(self.train_data),
                batch_size=self.local_batch,
                sampler=order,
                drop_last=True,
                **loader_settings(self.config, self.placement),
            )
            self._loaders["train"] = loader
        loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        return loader

    def _eval_loader(self, data: Dataset) -> DataLoader:
        """Evaluation batches in order; under torchrun each rank takes its share."""
        loader = self._loaders.get(id(data))
        if loader is not None and loader.dataset is data:
            return loader
        sampler = None
        if is_distributed():
            sampler = Shard(len(data), dist.get_rank(), dist.get_world_size())  # type: ignore[arg-type]
        loader = DataLoader(
            data,
            batch_size=self.config.eval_batch_size,
            shuffle=False,
            sampler=sampler,
            **loader_settings(self.config, self.placement),
        )
        if self.config.num_workers > 0 and self.config.persistent_workers:
            self._loaders[id(data)] = loader  # keep its workers for the next evaluation
        return loader

    def steps_per_epoch(self) -> int:
        world = dist.get_world_size() if is_distributed() else 1
        return len(self.train_data) // world // self.local_batch  # type: ignore[arg-type]

    # ------------------------------------------------------------------ training
    def fit(
        self,
        model: nn.Module,
        epochs: int,
        phase: str,
        hooks: TrainHooks | None = None,
        lr: float | None = None,
    ) -> FitResult:
        """Train ``model`` in place for one phase (resuming it if a checkpoint exists)."""
        hooks = hooks or TrainHooks()
        cfg = self.config
        self.placement.module(model)
        steps = self.steps_per_epoch()
        if steps == 0:
            raise UserError(
                f"train.batch_size: {cfg.batch_size} is larger than the training set "
                f"({len(self.train_data)} images)"  # type: ignore[arg-type]
            )
        total = steps * epochs
        extra = hooks.param_groups()
        optimizer = torch.optim.AdamW(
            parameter_groups(model, cfg.weight_decay, extra), lr=lr or cfg.lr
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(total, round(cfg.warmup_epochs * steps))
        )
        ddp_model: nn.Module = model
        if is_distributed():
            ddp_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device] if self.placement.is_cuda else None
            )
        forward = self.placement.compiled(ddp_model)  # train.compile
        scaler = self._scaler = self.placement.grad_scaler()  # fp16 only; for _train_epoch
        extra_params = [p for g in extra for p in g["params"]]

        start_epoch, resumed, metrics = 0, False, {}
        path = None if self.checkpoint_dir is None else self.checkpoint_dir / f"{phase}.pt"
        if path is not None and path.is_file():
            state = read_checkpoint(path, "delete it to train this phase again", MAP_LOCATION)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            hooks.load_state_dict(state["hooks"])
            _set_rng_state(state["rng"])
            if scaler is not None and "scaler" in state:
                scaler.load_state_dict(state["scaler"])
            start_epoch, resumed, metrics = state["epoch"], True, state["metrics"]
        if self.console is not None and is_main_process():
            self.console.phase_start(phase, epochs, steps, cfg.batch_size, start_epoch)

        for epoch in range(start_epoch, epochs):
            model.train()
            metrics = self._train_epoch(
                forward, optimizer, scheduler, hooks, extra_params, epoch, steps, total, phase
            )
            metrics.update(hooks.metrics())
            if self.val_data is not None:
                metrics.update({f"val_{k}": v for k, v in self.evaluate(model).items()})
            if path is not None and is_main_process():
                atomic_save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "hooks": hooks.state_dict(),
                        "rng": _rng_state(),
                        "epoch": epoch + 1,
                        "metrics": metrics,
                        **({} if scaler is None else {"scaler": scaler.state_dict()}),
                    },
                    path,
                )
            if is_distributed():
                dist.barrier()
            if is_main_process():
                event = EpochEnd(phase, epoch + 1, epochs, dict(metrics), hooks.candidate())
                for listener in self.listeners:
                    listener(event)
        return FitResult(epochs_run=epochs - start_epoch, resumed=resumed, last_metrics=metrics)

    def _train_epoch(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        hooks: TrainHooks,
        extra_params: list[Tensor],
        epoch: int,
        steps: int,
        total: int,
        phase: str,
    ) -> dict[str, float]:
        cfg = self.config
        scaler = self._scaler
        loss_sum, correct, seen = 0.0, 0, 0
        batches: Iterator[Any] = device_batches(self._loader(epoch), self.placement)
        bar = None
        if self.progress:
            from tqdm import tqdm

            epochs = total // steps  # the bar says which epoch of how many: "dense 3/25"
            bar = tqdm(total=steps, desc=f"{phase} {epoch + 1}/{epochs}", leave=False)
        for index in range(steps):
            images, targets = next(batches)  # on the device already
            step = epoch * steps + index
            hooks.on_step_start(step, total)
            with self._autocast():
                logits = model(images)
                loss = self._task_loss(images, logits, targets)
                extra = hooks.extra_loss(logits, targets)
                if extra is not None:
                    loss = loss + extra
            if not torch.isfinite(loss.detach()):
                last = "none yet" if self.checkpoint_dir is None else str(self.checkpoint_dir)
                raise TrainingDiverged(
                    f"{phase}: loss became {loss.item()} at epoch {epoch + 1}, step {index + 1}; "
                    f"stopped (last good checkpoint: {last}). Lower train.lr or check the data."
                )
            optimizer.zero_grad(set_to_none=True)
            (loss if scaler is None else scaler.scale(loss)).backward()
            if is_distributed() and extra_params:
                average_gradients(extra_params)
            if scaler is not None:
                scaler.unscale_(optimizer)  # hooks and clipping see the true gradients
            hooks.on_after_backward(step)
            if cfg.grad_clip is not None:  # one norm for weights and the hooks' parameters:
                # clipping gates apart was measured to land HiAP worse (docs/strategies.md)
                params = [p for g in optimizer.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if scaler is None:
                optimizer.step()
            else:  # skips the step when fp16 gradients overflowed
                scaler.step(optimizer)
                scaler.update()
            scheduler.step()
            hooks.on_step_end(step)
            loss_sum += float(loss.detach()) * len(targets)
            correct += int((logits.argmax(-1) == targets).sum())
            seen += len(targets)
            if bar is not None:
                bar.update(1)
                shown = {"loss": loss_sum / seen, "acc": correct / seen, **hooks.metrics()}
                bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        if bar is not None:
            bar.close()
        if is_distributed():  # every rank reports the figures of the global batches
            totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64)
            totals = self.placement.tensor(totals)
            dist.all_reduce(totals)
            loss_sum, correct, seen = float(totals[0]), int(totals[1]), int(totals[2])
        return {"train_loss": loss_sum / max(seen, 1), "train_top1": correct / max(seen, 1)}

    def _task_loss(self, images: Tensor, logits: Tensor, targets: Tensor) -> Tensor:
        cfg = self.config
        if self.teacher is None or cfg.distill is None:
            return F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing)
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        return distillation_loss(
            logits.float(),
            teacher_logits.float(),
            targets,
            cfg.distill.alpha,
            cfg.distill.temperature,
            cfg.label_smoothing,
        )

    def _autocast(self) -> Any:
        return self.placement.autocast()  # train.amp: bf16 on CUDA by default, fp32 on CPU

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset | None = None) -> dict[str, float]:
        """Top-1 and loss on ``data`` (the validation split by default)."""
        data = data if data is not None else self.val_data
        if data is None:
            raise ValueError("no evaluation data")
        was_training = model.training
        forward = self.placement.compiled(self.placement.module(model).eval())
        # sums stay on the device (no sync per batch); float64, as Python floats were
        correct = self.placement.tensor(torch.zeros((), dtype=torch.long))
        loss_sum = self.placement.tensor(torch.zeros((), dtype=torch.float64))
        seen = 0
        for images, targets in device_batches(self._eval_loader(data), self.placement):
            with self._autocast():
                logits = forward(images).float()
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").double()
            correct += (logits.argmax(-1) == targets).sum()
            seen += len(targets)
        model.train(was_training)
        count = self.placement.tensor(torch.tensor(float(seen), dtype=torch.float64))
        totals = torch.stack([correct.double(), count, loss_sum])
        if is_distributed():  # each rank scored its share (Shard)
            dist.all_reduce(totals)
        right, scored, loss_total = totals.cpu().tolist()
        return {"top1": right / max(scored, 1), "loss": loss_total / max(scored, 1)}
