"""A Lightning ``Callback`` that runs a :class:`gradvar.Monitor` during ``trainer.fit``.

    trainer = lightning.Trainer(callbacks=[LightningMonitor(probe_batches, F.cross_entropy,
                                                            out="records.parquet")])

Every k optimizer steps (``trainer.global_step``) the probe set is measured at the current
weights against the optimizer's snapshot (``AlphaSVRG``) or the weights k steps back; the
records are appended to ``out`` and the headline metrics (``gradvar/alpha_star_layer``, ...)
go to every logger of the trainer (TensorBoard, CSV, ...). Under DDP every rank probes its
share of the probe set, the sums are all-reduced, and rank 0 writes and logs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import lightning.pytorch as pl

from gradvar.monitor import LossFn, Monitor

__all__ = ["LightningMonitor"]


class LightningMonitor(pl.Callback):
    """Probe every ``every`` optimizer steps of a Lightning run (see :class:`gradvar.Monitor`).

    Args:
        data: the probe set (one (inputs, targets) pair or an iterable of pairs);
            ``loss_fn(pl_module(inputs), targets)`` must give the mean loss.
        loss_fn: the loss, as for :class:`gradvar.Probe`.
        every: k, or ``"auto"`` (probing takes at most ``max_overhead`` of training time).
        out: records file to append to (None: kept in ``monitor.records`` only).
        run: the ``run`` column (default: the first logger's name, else ``"lightning"``).
        monitor_options: the other :class:`gradvar.Monitor` arguments (``alphas``,
            ``max_overhead``) and :class:`gradvar.Probe` options (``unit``, ``layers``, ...).
    """

    def __init__(
        self,
        data: Any,
        loss_fn: LossFn,
        *,
        every: int | str = "auto",
        out: str | os.PathLike[str] | None = None,
        run: str | None = None,
        alphas: Iterable[float] = (1.0,),
        **monitor_options: Any,
    ) -> None:
        super().__init__()
        self.data, self.loss_fn, self.every, self.out = data, loss_fn, every, out
        self.run, self.alphas, self.options = run, tuple(alphas), monitor_options
        self.monitor: Monitor | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0] if len(trainer.optimizers) == 1 else None
        run = self.run
        if run is None:
            run = trainer.logger.name if trainer.logger is not None else "lightning"
        per_epoch = trainer.num_training_batches
        accumulate = max(trainer.accumulate_grad_batches, 1)
        steps_per_epoch = (
            per_epoch // accumulate if isinstance(per_epoch, int) and per_epoch > 0 else None
        )
        self.monitor = Monitor(
            pl_module,
            self.loss_fn,
            self.data,
            every=self.every,
            out=self.out,
            run=str(run),
            optimizer=optimizer,
            log=lambda metrics, step: _log(trainer, metrics, step),
            start_step=trainer.global_step,
            steps_per_epoch=steps_per_epoch or None,
            alphas=self.alphas,
            **self.options,
        )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.monitor is not None:
            self.monitor.step(trainer.global_step)


def _log(trainer: pl.Trainer, metrics: Mapping[str, float], step: int) -> None:
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)
