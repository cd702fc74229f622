"""A transformers ``TrainerCallback`` that runs a :class:`gradvar.Monitor` in ``Trainer.train``.

    monitor = HuggingFaceMonitor(probe_batches, loss_fn, out="records.parquet")
    trainer = transformers.Trainer(model, args, train_dataset=..., callbacks=[monitor])
    monitor.attach(trainer)         # send the metrics to the trainer's report_to loggers
    trainer.train()

Every k optimizer steps (``state.global_step``) the probe set is measured at the current
weights against the optimizer's snapshot (``AlphaSVRG``) or the weights k steps back; the
records are appended to ``out``. The headline metrics go through ``trainer.log`` (so to every
``report_to`` integration: TensorBoard, ...) once :meth:`HuggingFaceMonitor.attach` is called,
and into ``state.log_history`` otherwise. The probe calls ``loss_fn(model(inputs)[output],
targets)`` (``output="logits"`` by default; ``None`` for a model that returns a tensor), so the
model's forward must take the probe set's inputs as its first argument (``input_ids``, ...).
Under DDP rank 0 writes and logs; the sums are all-reduced.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import transformers
from torch import Tensor, nn

from gradvar.monitor import LossFn, Monitor

__all__ = ["HuggingFaceMonitor", "OutputField"]


class OutputField(nn.Module):
    """``model`` seen under its own parameter names, returning ``model(inputs)[field]``.

    The probe differentiates a tensor-valued model; transformers models return a
    ``ModelOutput``. This view shares the model's submodules, parameters and buffers (not
    copies, and no ``"model."`` prefix), so the records name layers as the model does and
    the optimizer's snapshot (keyed by parameter identity) still matches.
    """

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)  # not a submodule: names stay the model's
        self._modules = model._modules
        self._parameters = model._parameters
        self._buffers = model._buffers
        self.field = field

    def forward(self, inputs: Tensor) -> Tensor:
        return self.inner(inputs)[self.field]


class HuggingFaceMonitor(transformers.TrainerCallback):
    """Probe every ``every`` optimizer steps of a transformers ``Trainer`` run.

    Args:
        data: the probe set (one (inputs, targets) pair or an iterable of pairs).
        loss_fn: ``loss_fn(model(inputs), targets)`` → mean loss.
        every: k, or ``"auto"`` (probing takes at most ``max_overhead`` of training time).
        out: records file to append to (None: kept in ``monitor.records`` only).
        run: the ``run`` column (default: the ``run_name`` of the TrainingArguments).
        output: the field of the model's output the loss takes (None: the output itself).
        monitor_options: the other :class:`gradvar.Monitor` arguments and
            :class:`gradvar.Probe` options (``unit``, ``layers``, ...).
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
        output: str | None = "logits",
        **monitor_options: Any,
    ) -> None:
        self.output = output
        self.data, self.loss_fn, self.every, self.out = data, loss_fn, every, out
        self.run, self.alphas, self.options = run, tuple(alphas), monitor_options
        self.monitor: Monitor | None = None
        self.trainer: transformers.Trainer | None = None
        self._state: transformers.TrainerState | None = None

    def attach(self, trainer: transformers.Trainer) -> HuggingFaceMonitor:
        """Log through ``trainer.log`` (its report_to loggers); adds the callback if needed."""
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self.trainer = trainer
        return self

    def on_train_begin(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        model: Any = None,
        optimizer: Any = None,
        **kwargs: Any,
    ) -> None:
        self._state = state
        # Accelerate wraps the optimizer; the monitor needs the one holding the snapshot.
        optimizer = getattr(optimizer, "optimizer", optimizer)
        loader = kwargs.get("train_dataloader")
        steps_per_epoch = None
        if loader is not None and hasattr(loader, "__len__") and len(loader) > 0:
            steps_per_epoch = max(len(loader) // max(args.gradient_accumulation_steps, 1), 1)
        self.monitor = Monitor(
            model if self.output is None else OutputField(model, self.output),
            self.loss_fn,
            self.data,
            every=self.every,
            out=self.out,
            run=self.run or args.run_name or "transformers",
            optimizer=optimizer,
            log=self._log,
            start_step=state.global_step,
            steps_per_epoch=steps_per_epoch,
            alphas=self.alphas,
            **self.options,
        )

    def on_step_end(
        self,
        args: transformers.TrainingArguments,
        state: transformers.TrainerState,
        control: transformers.TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.monitor is not None:
            self.monitor.step(state.global_step, epoch=state.epoch)

    def _log(self, metrics: Mapping[str, float], step: int) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        elif self._state is not None:
            self._state.log_history.append({**metrics, "step": step})
