"""A small reference training loop that writes a checkpoint series gradvar can analyse.

``train`` runs SGD or AdamW, optionally wrapped in alpha-SVRG, on an in-memory dataset, and
writes into ``run_dir``: ``step-XXXXXX.pt`` checkpoints (every ``checkpoint_every`` steps, at
every snapshot including step 0, and at the end), ``run.json`` and ``metrics.csv``.

Randomness is a pure function of ``seed``: epoch ``e`` is shuffled by its own seeded generator
(a fresh order every epoch, unlike the reference code), batch ``i`` of epoch ``e`` is augmented
by its own generator, and step ``t`` runs under global RNGs seeded from ``(seed, t)`` (dropout).
So a run resumed from any checkpoint continues exactly as the uninterrupted run would, and the
snapshot pass sees exactly the training batches. The caller's global RNG states are untouched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from gradvar import recipe as official
from gradvar import schedules
from gradvar._files import atomic_path
from gradvar._utils import check_positive, seeded
from gradvar.checkpoints import (
    CHECKPOINT_SUFFIXES,
    CheckpointSeries,
    load_into,
    read_run_config,
    save_checkpoint,
    write_run_config,
)
from gradvar.errors import CheckpointError, InvalidArgumentError, NonFiniteGradientError
from gradvar.paper_alpha import AlphaStarLog, interval_indices, snapshot_by_name

__all__ = ["METRICS_FILE", "TrainResult", "train", "read_metrics"]

METRICS_FILE = "metrics.csv"
Transform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
_SHUFFLE, _AUGMENT, _STEP, _SNAPSHOT, _ALPHA = range(5)  # stream tags for _derive_seed
_VR_MODES = ("none", "svrg", "alpha-svrg", "svrg-optimal")
_RECIPES = ("plain", "official")


@dataclass(frozen=True)
class TrainResult:
    """What a run did: losses per step (update k at index k-1) and per epoch, checkpoint steps."""

    run_dir: Path
    steps: int
    steps_per_epoch: int
    step_losses: list[float]
    epoch_losses: list[float]
    checkpoint_steps: list[int]


def _derive_seed(seed: int, *keys: int) -> int:
    """An independent 63-bit seed for the stream ``(seed, *keys)``."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> 1)


def _tensors(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return dataset.tensors[0], dataset.tensors[1]
    items = [dataset[i] for i in range(len(dataset))]  # type: ignore[arg-type]
    return torch.stack([x for x, _ in items]), torch.as_tensor([int(y) for _, y in items])


def _alpha_schedule(vr: str, alpha: Any, total_steps: int, interval: int) -> Any:
    """None (plain optimizer), Constant(1) for SVRG, or the alpha-SVRG schedule.

    For "alpha-svrg" a number is the paper's default: ``Linear(alpha, total_steps,
    hold=interval)``, falling from ``alpha`` to 0 across snapshot intervals. Pass a Schedule,
    a ``to_dict()`` dict or a schedule JSON path for anything else (e.g. a constant), or
    ``"measured"`` for the alpha AlphaSVRG measures itself.
    """
    if vr == "none":
        return None
    if vr in ("svrg", "svrg-optimal"):
        return schedules.Constant(1.0)
    if alpha == "measured":
        return schedules.as_schedule(alpha)  # AlphaSVRG measures it from its own pairs
    if isinstance(alpha, (str, os.PathLike)):
        return schedules.load(alpha)
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        return schedules.Linear(float(alpha), total_steps=total_steps, hold=interval)
    return schedules.as_schedule(alpha)


def _alpha_at(schedule: Any, step: int, interval: int) -> float:
    """Alpha of update ``step``; in-interval schedules (Double, Fitted) also get the position."""
    at = getattr(schedule, "at", None)
    return float(at(step, step % interval) if at is not None else schedule(step))


def _qualified_name(function: Callable[..., Any] | None) -> str | None:
    if function is None:
        return None
    return f"{function.__module__}:{getattr(function, '__qualname__', repr(function))}"


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def _write_metrics(path: Path, rows: list[tuple[int, float, str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["step", "epoch", "metric", "value"])
    writer.writerows((s, repr(e), m, repr(v)) for s, e, m, v in rows)  # repr: exact floats
    _write_text(path, buffer.getvalue())


def read_metrics(run_dir: str | os.PathLike[str]) -> list[tuple[int, float, str, float]]:
    """The rows of ``run_dir/metrics.csv``: (step, epoch, metric, value).

    Metrics: ``train_loss`` (the mini-batch loss of update ``step``, before it), ``alpha``
    (alpha used by that update; variance-reduced runs), ``epoch_train_loss`` (mean loss over
    the whole training set in eval mode after epoch ``epoch``).
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [
            (int(r["step"]), float(r["epoch"]), r["metric"], float(r["value"]))
            for r in csv.DictReader(handle)
        ]


def _prepare_run_dir(run_dir: Path, config: dict[str, Any], resume: bool) -> bool:
    """Write run.json; True if ``run_dir`` holds checkpoints of the same run to resume from."""
    existing = run_dir.is_dir() and any(
        p.suffix in CHECKPOINT_SUFFIXES and not p.name.startswith(".") for p in run_dir.iterdir()
    )
    if existing and not resume:
        raise CheckpointError(
            f"{run_dir} already holds checkpoints; pass resume=True to continue that run, or "
            "choose an empty run_dir"
        )
    if existing:
        saved, wanted = read_run_config(run_dir), json.loads(json.dumps(config))
        differ = sorted(k for k in set(saved) | set(wanted) if saved.get(k) != wanted.get(k))
        if differ:
            shown = "; ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in differ)
            raise CheckpointError(
                f"cannot resume {run_dir}: the configuration differs from its run.json ({shown}); "
                "resume with the same arguments, or start a new run_dir"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, config)
    return existing


@torch.no_grad()
def _full_pass_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    was_training = model.training
    model.eval()
    total = sum(
        F.cross_entropy(model(x[i : i + batch]), y[i : i + batch], reduction="sum").double()
        for i in range(0, len(y), batch)
    )
    model.train(was_training)
    return float(total) / len(y)


def train(
    model: nn.Module,
    dataset: Dataset,
    *,
    run_dir: str | os.PathLike[str],
    optimizer: str = "sgd",
    lr: float | None = None,
    weight_decay: float | None = None,
    momentum: float | None = None,
    recipe: str = "plain",
    warmup_steps: int | None = None,
    min_lr: float = official.MIN_LR,
    epochs: int,
    batch_size: int = 128,
    seed: int = 0,
    vr: str = "none",
    alpha: Any = 0.75,
    snapshot_interval: int | None = None,
    checkpoint_every: int | None = None,
    drop_last: bool = True,
    resume: bool = False,
    progress: bool = True,
    model_spec: Mapping[str, Any] | None = None,
    data_spec: str | Mapping[str, Any] | None = None,
    transform: Transform | None = None,
    alpha_log_every: int | None = None,
    alpha_log_batches: int = 16,
) -> TrainResult:
    """Train ``model`` on ``dataset`` with cross-entropy and write a checkpoint series.

    Args:
        optimizer: "sgd" (with ``momentum``) or "adamw"; ``weight_decay`` as in torch.optim.
        recipe: "plain" (constant ``lr``, required; ``weight_decay`` and ``momentum`` default
            to 0, on every parameter) or "official", the α-SVRG code's recipe
            (:mod:`gradvar.recipe`): Nesterov SGD / AdamW, no decay on biases and 1-D
            tensors, default lr (SGD 0.05, AdamW 4e-3) and weight decay 0.05, and a
            per-iteration warmup + cosine schedule to ``min_lr`` (``warmup_steps`` default:
            1/6 of training, the code's 50 of 300 epochs).
        vr: "none", "svrg" (alpha = 1), "alpha-svrg" (``gradvar.optim.AlphaSVRG``) or
            "svrg-optimal" (SVRG with the per-coordinate α* of :mod:`gradvar.paper_alpha`,
            re-estimated every ``alpha_log_every`` steps; 1 at every snapshot).
        alpha_log_every, alpha_log_batches: log the paper's α* (metrics ``alpha_star_mean_ref``
            and ``alpha_star_mean``, see :mod:`gradvar.paper_alpha`) every ``alpha_log_every``
            steps of each snapshot interval, from ``alpha_log_batches`` of the interval's
            mini-batches (evenly spaced), against the interval's snapshot (for a plain run: its
            weights at the interval's start). Rows are at step ``s`` = the weights after ``s``
            updates; at a snapshot the value is 1.
        alpha: for "alpha-svrg": a number alpha0 (the paper's linear decay from alpha0 to 0
            across snapshot intervals), a Schedule, a ``to_dict()`` dict or a schedule JSON path.
        snapshot_interval: steps between snapshots (default: one epoch). Checkpoints are
            written at every snapshot, every ``checkpoint_every`` steps and at the end.
        resume: continue from the last checkpoint in ``run_dir`` (same configuration needed);
            without it a ``run_dir`` that already holds checkpoints is refused.
        model_spec, data_spec: recorded in run.json (e.g. ``{"name": "mlp4", "kwargs": ...}``
            and ``"digits"``) so the analysis can rebuild the model and data.
        transform: ``transform(x_batch, generator)`` (e.g. ``gradvar.zoo.augment``), drawn
            from a per-batch seeded generator.
    """
    if optimizer not in ("sgd", "adamw"):
        raise InvalidArgumentError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")
    if vr not in _VR_MODES:
        raise InvalidArgumentError(f"vr must be one of {_VR_MODES}, got vr={vr!r}")
    if recipe not in _RECIPES:
        raise InvalidArgumentError(f"recipe must be one of {_RECIPES}, got recipe={recipe!r}")
    if vr == "svrg-optimal" and alpha_log_every is None:
        raise InvalidArgumentError(
            "vr='svrg-optimal' re-estimates α* every alpha_log_every steps: pass it (e.g. 1/12 "
            "of an epoch)"
        )
    if alpha_log_every is not None:
        check_positive("alpha_log_every", alpha_log_every)
        check_positive("alpha_log_batches", alpha_log_batches)
    check_positive("epochs", epochs)
    check_positive("batch_size", batch_size)
    if snapshot_interval is not None:
        check_positive("snapshot_interval", snapshot_interval)
    if checkpoint_every is not None:
        check_positive("checkpoint_every", checkpoint_every)
    x, y = _tensors(dataset)
    steps_per_epoch = len(y) // batch_size if drop_last else math.ceil(len(y) / batch_size)
    if steps_per_epoch == 0:
        raise InvalidArgumentError(
            f"batch_size={batch_size} exceeds the {len(y)} examples and drop_last=True leaves no "
            "batch; lower batch_size or pass drop_last=False"
        )
    total = epochs * steps_per_epoch
    interval = snapshot_interval or steps_per_epoch
    schedule = _alpha_schedule(vr, alpha, total, interval)
    if recipe == "official":
        warmup = official.default_warmup_steps(total) if warmup_steps is None else warmup_steps
    run_dir = Path(run_dir)
    opt, opt_entry = official.base_optimizer(optimizer, model, recipe, lr, weight_decay, momentum)
    lr = opt_entry["lr"]
    config = {
        "version": 1,
        "model": dict(model_spec) if model_spec is not None else None,
        "data": dict(data_spec) if isinstance(data_spec, Mapping) else data_spec,
        "loss": "cross_entropy",
        "seed": seed,
        "unit": str(batch_size),
        "batch_size": batch_size,
        "drop_last": drop_last,
        "num_examples": len(y),
        "steps_per_epoch": steps_per_epoch,
        "epochs": epochs,
        "total_steps": total,
        "snapshot_interval": interval,
        "checkpoint_every": checkpoint_every,
        "optimizer": opt_entry,
        "vr": vr,
        "alpha": schedule.to_dict() if schedule is not None else None,
        "transform": _qualified_name(transform),
    }
    if recipe == "official":
        config["recipe"] = "official"
        config["lr_schedule"] = {"kind": "warmup-cosine", "warmup_steps": warmup, "min_lr": min_lr}
    if alpha_log_every is not None:
        config["alpha_log"] = {"every": alpha_log_every, "batches": alpha_log_batches}

    existing = _prepare_run_dir(run_dir, config, resume)

    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    if schedule is not None:
        try:
            from gradvar.optim import AlphaSVRG
        except ImportError as exc:
            raise InvalidArgumentError(
                f"vr={vr!r} needs gradvar.optim.AlphaSVRG, which failed to import: {exc}"
            ) from exc
        opt = AlphaSVRG(
            opt,
            alpha=schedule,
            snapshot_interval=interval,
            named_parameters=model.named_parameters(),
        )

    start, rows = 0, []
    if existing:
        last = CheckpointSeries(run_dir)[-1]
        load_into(model, last)
        state = last.optimizer_state()
        if state is None:
            raise CheckpointError(f"{last.path} has no optimizer state, so it cannot be resumed")
        opt.load_state_dict(state)
        start = last.step
        rows = [r for r in read_metrics(run_dir) if r[0] <= start]
    scheduler = None
    if recipe == "official":  # after the resume: the loaded param groups hold initial_lr
        scheduler = official.WarmupCosine(opt, total, warmup, min_lr, last_epoch=start - 1)
    logger = None
    if alpha_log_every is not None:
        logger = AlphaStarLog(model, F.cross_entropy, alpha_log_every, alpha_log_batches)

    def batch(epoch: int, order: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        take = order[index * batch_size : (index + 1) * batch_size]
        inputs = x[take]
        if transform is not None:
            generator = torch.Generator().manual_seed(_derive_seed(seed, _AUGMENT, epoch, index))
            inputs = transform(inputs, generator)
        return inputs, y[take]

    def epoch_order(epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(_derive_seed(seed, _SHUFFLE, epoch))
        return torch.randperm(len(y), generator=generator).to(device)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = epoch_order(epoch)
        return (batch(epoch, order, i) for i in range(steps_per_epoch))

    def save(step: int, final: bool = False) -> None:
        # The snapshot this state is paired with: the last interval start at or before it.
        # The end-of-training checkpoint belongs to the last interval actually trained (a
        # snapshot at step == total would never have been taken). Plain runs record it too,
        # so the analysis pairs every run the same way.
        last = step - 1 if final and step > 0 else step
        snapshot_step = (last // interval) * interval
        epoch = step / steps_per_epoch
        save_checkpoint(
            run_dir, model, step=step, epoch=epoch, snapshot_step=snapshot_step, optimizer=opt
        )
        _write_metrics(run_dir / METRICS_FILE, rows)

    model.train()
    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules  # terminal or notebook
    quiet = not progress or not interactive
    bar = tqdm(total=total, initial=start, unit="step", desc=run_dir.name, disable=quiet)
    order = epoch_order(start // steps_per_epoch)
    for step in range(start, total):
        epoch, index = divmod(step, steps_per_epoch)
        if index == 0 and step != start:
            order = epoch_order(epoch)
        at_snapshot = step % interval == 0
        if step != start or not existing:
            if at_snapshot or (checkpoint_every and step % checkpoint_every == 0):
                save(step)  # before the snapshot refresh, so a resume repeats it exactly
        if at_snapshot and schedule is not None:
            with seeded(_derive_seed(seed, _SNAPSHOT, step)):
                opt.refresh_snapshot(model, epoch_batches(epoch), F.cross_entropy)
        first = (step // interval) * interval
        if logger is not None and logger.due(step, first):
            result = logger.measure(
                step,
                first,
                [batch(epoch, order, i) for i in interval_indices(steps_per_epoch, logger.batches)],
                snapshot=snapshot_by_name(opt, model) if schedule is not None else None,
                seed=_derive_seed(seed, _ALPHA, step),
            )
            rows.append((step, step / steps_per_epoch, "alpha_star_mean_ref", result.mean_ref))
            rows.append((step, step / steps_per_epoch, "alpha_star_mean", result.mean))
            if vr == "svrg-optimal":
                opt.set_coordinate_alpha(None if step == first else result.alpha)
        inputs, targets = batch(epoch, order, index)
        with seeded(_derive_seed(seed, _STEP, step)):
            opt.zero_grad()
            loss = F.cross_entropy(model(inputs), targets)
            loss.backward()
            if schedule is not None:
                with opt.at_snapshot(model):
                    F.cross_entropy(model(inputs), targets).backward()
            # a measured alpha is known only to the optimizer: log the one this step uses
            used = opt.current_alpha() if isinstance(schedule, schedules.Measured) else None
            opt.step()
            if scheduler is not None:
                scheduler.step()
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteGradientError(
                f"the training loss is {value} at step {step} (epoch {epoch}); lower lr={lr}"
            )
        done = step + 1
        rows.append((done, done / steps_per_epoch, "train_loss", value))
        if schedule is not None:
            alpha_now = (
                sum(used) / len(used) if used else _alpha_at(schedule, step, interval)
            )  # fmt: skip
            rows.append((done, done / steps_per_epoch, "alpha", alpha_now))
        if done % steps_per_epoch == 0:
            full = _full_pass_loss(model, x, y, batch_size)
            rows.append((done, done / steps_per_epoch, "epoch_train_loss", full))
            bar.set_postfix(epoch=done // steps_per_epoch, train_loss=f"{full:.4f}")
        bar.update(1)
    bar.close()
    if start < total or not existing:
        save(total, final=True)
    return TrainResult(
        run_dir=run_dir,
        steps=total,
        steps_per_epoch=steps_per_epoch,
        step_losses=[v for _, _, m, v in rows if m == "train_loss"],
        epoch_losses=[v for _, _, m, v in rows if m == "epoch_train_loss"],
        checkpoint_steps=CheckpointSeries(run_dir).steps,
    )
