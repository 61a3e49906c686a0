"""The shared training loop: exact resume after SIGKILL, NaN stop, DDP gradients, groups."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from automl_hiap.config import TrainConfig
from automl_hiap.recipe import parameter_groups, warmup_cosine
from automl_hiap.strategy import TrainHooks
from automl_hiap.trainer import EpochEnd, Trainer, TrainingDiverged

from .conftest import tiny_spec

# A child process trains a tiny ViT for 4 epochs (16 steps each); with a third argument it
# SIGKILLs itself at that global step, mid-epoch, as an outside kill would.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, torch
    from torch.utils.data import TensorDataset
    from automl_hiap.config import TrainConfig
    from automl_hiap.models import ModelSpec
    from automl_hiap.strategy import TrainHooks
    from automl_hiap.trainer import Trainer
    torch.set_num_threads(1)
    ckpt, out = sys.argv[1], sys.argv[2]
    kill_at = int(sys.argv[3]) if len(sys.argv) > 3 else -1

    class KillAt(TrainHooks):
        def on_step_start(self, step, total_steps):
            if step == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(256, 3, 16, 16, generator=gen)
    data = TensorDataset(images, torch.randint(0, 10, (256,), generator=gen))
    torch.manual_seed(0)
    kwargs = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, mlp_ratio=2.0,
                  num_classes=10, drop_path_rate=0.1)
    model = ModelSpec("vit_tiny_patch16_224", kwargs).create()
    config = TrainConfig(batch_size=16, lr=1e-3, warmup_epochs=1, seed=0)
    trainer = Trainer(config, data, checkpoint_dir=ckpt, device="cpu")
    trainer.fit(model, epochs=4, phase="search", hooks=KillAt())
    torch.save(model.state_dict(), out)
    """
)


def train_in_child(tmp_path: Path, name: str, kill_at_step: int | None = None) -> Path:
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    ckpt, out = tmp_path / f"{name}_ckpt", tmp_path / f"{name}.pt"
    cmd = [sys.executable, str(script), str(ckpt), str(out)]
    if kill_at_step is not None:
        killed = subprocess.run([*cmd, str(kill_at_step)], timeout=300)
        assert killed.returncode == -signal.SIGKILL and not out.exists()
        assert torch.load(ckpt / "search.pt", weights_only=True)["epoch"] == kill_at_step // 16
    subprocess.run(cmd, check=True, timeout=300)
    return out


def test_killed_and_resumed_run_ends_exactly_like_an_uninterrupted_one(tmp_path: Path) -> None:
    uninterrupted = torch.load(train_in_child(tmp_path, "full"), weights_only=True)
    resumed = torch.load(
        train_in_child(tmp_path, "killed", kill_at_step=2 * 16 + 5), weights_only=True
    )
    assert uninterrupted.keys() == resumed.keys()
    for key in uninterrupted:
        assert torch.equal(uninterrupted[key], resumed[key]), key


class ExplodeAt(TrainHooks):
    def __init__(self, step: int) -> None:
        self.step, self.now = step, -1

    def on_step_start(self, step: int, total_steps: int) -> None:
        self.now = step

    def extra_loss(self, logits, targets):
        return torch.tensor(float("nan")) if self.now == self.step else None


def tiny_data(n: int = 64) -> TensorDataset:
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(
        torch.randn(n, 3, 16, 16, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    )


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    model = tiny_spec().create()
    trainer = Trainer(
        TrainConfig(batch_size=16, lr=1e-3), tiny_data(), checkpoint_dir=tmp_path, device="cpu"
    )
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 2"):
        trainer.fit(model, epochs=3, phase="p", hooks=ExplodeAt(step=4 + 1))
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_finished_phase_is_loaded_not_retrained(tmp_path: Path) -> None:
    trainer = Trainer(
        TrainConfig(batch_size=16, lr=1e-3), tiny_data(), checkpoint_dir=tmp_path, device="cpu"
    )
    torch.manual_seed(0)
    first = tiny_spec().create()
    trainer.fit(first, epochs=1, phase="p")
    torch.manual_seed(1)
    second = tiny_spec().create()
    result = trainer.fit(second, epochs=1, phase="p")
    assert result.resumed and result.epochs_run == 0
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True)
    )


def test_no_weight_decay_on_norms_biases_and_hook_parameters() -> None:
    model = tiny_spec().create()
    logits = torch.nn.Parameter(torch.zeros(4, 4))
    groups = parameter_groups(model, 0.05, [{"params": [logits], "lr": 0.1}])
    decayed = {id(p) for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert id(model.blocks[0].attn.qkv.weight) in decayed
    assert id(model.blocks[0].attn.qkv.bias) not in decayed
    assert id(model.blocks[0].norm1.weight) not in decayed
    assert id(logits) not in decayed
    assert groups[-1]["lr"] == 0.1


def test_warmup_then_cosine_to_zero() -> None:
    factor = warmup_cosine(total_steps=100, warmup_steps=10)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(55) == pytest.approx(0.5)
    assert factor(100) == pytest.approx(0.0, abs=1e-12)


DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys, torch
    import torch.distributed as dist
    from torch.utils.data import TensorDataset
    from automl_hiap.config import TrainConfig
    from automl_hiap.models import ModelSpec
    from automl_hiap.strategy import TrainHooks
    from automl_hiap.trainer import Trainer
    torch.set_num_threads(1)
    out = sys.argv[1]
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(32, 3, 16, 16, generator=gen)
    data = TensorDataset(images, torch.randint(0, 10, (32,), generator=gen))
    torch.manual_seed(0)
    kwargs = dict(img_size=16, patch_size=4, depth=2, embed_dim=32, num_heads=2, mlp_ratio=2.0,
                  num_classes=10)
    model = ModelSpec("vit_tiny_patch16_224", kwargs).create()
    extra = torch.nn.Parameter(torch.ones(3))

    class Grab(TrainHooks):
        def param_groups(self):
            return [{"params": [extra], "lr": 0.1}]
        def extra_loss(self, logits, targets):
            return (extra * logits.mean()).sum()
        def on_after_backward(self, step):
            grads = {n: p.grad.clone() for n, p in model.named_parameters()}
            grads["extra"] = extra.grad.clone()
            rank = dist.get_rank() if dist.is_initialized() else 0
            torch.save(grads, f"{out}.{rank}")

    config = TrainConfig(batch_size=32, lr=1e-3, grad_clip=None, seed=0)
    Trainer(config, data, device="cpu").fit(model, epochs=1, phase="p", hooks=Grab())
    """
)


def test_ddp_with_two_cpu_processes_matches_one_process_on_the_global_batch(tmp_path: Path) -> None:
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, str(script), str(tmp_path / "single")], check=True, env=env, timeout=300
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(tmp_path / "ddp"),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    single = torch.load(tmp_path / "single.0", weights_only=True)
    for rank in (0, 1):
        ddp = torch.load(tmp_path / f"ddp.{rank}", weights_only=True)
        for name, grad in single.items():
            assert torch.allclose(ddp[name], grad, atol=1e-5, rtol=1e-4), (rank, name)


def test_listeners_hear_every_epoch_and_can_stop_the_phase(tmp_path: Path) -> None:
    trainer = Trainer(
        TrainConfig(batch_size=16, lr=1e-3), tiny_data(), tiny_data(32), tmp_path, device="cpu"
    )
    heard = []

    def stop_after_two(event: EpochEnd) -> None:
        heard.append((event.phase, event.epoch, event.epochs, sorted(event.metrics)))
        if event.epoch == 2:
            raise KeyboardInterrupt

    trainer.listeners.append(stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(tiny_spec().create(), epochs=3, phase="p")
    keys = ["train_loss", "train_top1", "val_loss", "val_top1"]
    assert heard == [("p", 1, 3, keys), ("p", 2, 3, keys)]
    assert torch.load(tmp_path / "p.pt", weights_only=True)["epoch"] == 2  # saved before


SEARCH_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, torch
    import torch.distributed as dist
    import automl_hiap.search as search
    from automl_hiap.config import load_config
    torch.set_num_threads(1)
    out, weights = sys.argv[1], sys.argv[2]
    rank = int(os.environ.get("RANK", "0"))
    saved = []
    real_save = search.save
    search.save = lambda model, folder: saved.append(rank) or real_save(model, folder)
    config = load_config("test_vit.yaml", [
        f"model.checkpoint={weights}", "data.train_subset=128",
        "strategy.params.finetune_epochs=1",
    ])
    report = search.run_search(config, out, progress=False, measure_batch=None)
    m = report.metrics
    record = {"saved": saved, "dense": [m.dense.top1, m.dense.val_top1],
              "pruned": [m.pruned.top1, m.pruned.val_top1], "subnet": report.subnet.to_dict()}
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump(record, f)
    """
)


def test_a_search_under_torchrun_shards_data_reduces_metrics_and_writes_on_rank_0(
    tmp_path: Path,
) -> None:
    from safetensors.torch import save_file

    weights = tmp_path / "dense.safetensors"
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in tiny_spec().create().state_dict().items()}, weights)
    script = tmp_path / "search.py"
    script.write_text(SEARCH_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    subprocess.run(
        [sys.executable, str(script), str(single), str(weights)], check=True, env=env, timeout=600
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(ddp),
            str(weights),
        ],
        check=True,
        env=env,
        timeout=600,
    )
    one = json.loads((tmp_path / "single.rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"ddp.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["saved"] == [0] and ranks[1]["saved"] == []  # rank 0 alone writes
    assert (ddp / "metrics.json").is_file() and (ddp / "model" / "arch.json").is_file()
    assert ranks[0]["dense"] == ranks[1]["dense"] == one["dense"]  # sharded eval, summed
    assert ranks[0]["pruned"] == ranks[1]["pruned"]  # every rank reports the reduced figures
    assert ranks[0]["subnet"] == ranks[1]["subnet"] == one["subnet"]


def test_distillation_loss_follows_its_formula() -> None:
    """(1 − α)·CE with label smoothing + α·T²·KL(teacher ‖ student) at temperature T, by hand."""
    from automl_hiap.recipe import distillation_loss

    gen = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    targets = torch.randint(0, 7, (5,), generator=gen)
    alpha, t, smoothing = 0.7, 4.0, 0.1
    log_p = torch.log_softmax(student, -1)
    smoothed = torch.full((5, 7), smoothing / 7).scatter_add_(
        1, targets[:, None], torch.full((5, 1), 1 - smoothing)
    )
    hard = -(smoothed * log_p).sum(-1).mean()
    p_t, log_t = torch.softmax(teacher / t, -1), torch.log_softmax(teacher / t, -1)
    soft = (p_t * (log_t - torch.log_softmax(student / t, -1))).sum(-1).mean()
    expected = (1 - alpha) * hard + alpha * t**2 * soft
    got = distillation_loss(student, teacher, targets, alpha, t, smoothing)
    torch.testing.assert_close(got, expected)
