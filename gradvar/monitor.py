"""Monitor: measure gradient variance and α* while training, every k optimizer steps.

    monitor = gradvar.Monitor(model, F.cross_entropy, probe_batches, out="run/records.parquet")
    for x, y in loader:
        ...; opt.step()
        monitor.step()          # every k steps: probe, append records, log headline metrics

Every k steps the fixed probe set is measured at the current weights θ against θ̃: the
optimizer's last snapshot when it has one (``AlphaSVRG``), else the weights the monitor kept
at its previous probe, k steps back. The records have the schema of :func:`gradvar.analyze`
(``checkpoint`` = ``"step-000123"``) and are appended to ``out`` (rows of the same run and
step are replaced, so a resumed run does not duplicate them). With ``every="auto"`` k is
chosen from the measured costs so that probing takes at most ``max_overhead`` of the
training time. Under ``torch.distributed`` every rank calls :meth:`Monitor.step`; the probe
set is split across ranks and the sums all-reduced, and only rank 0 writes and logs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from gradvar._data import as_batches
from gradvar._files import locked
from gradvar.errors import InvalidArgumentError
from gradvar.probe import Probe, ProbeResult
from gradvar.records import WHOLE_MODEL, read_records, to_frame, write_records

__all__ = ["Monitor", "HEADLINE_METRICS", "LossFn", "checkpoint_label"]

HEADLINE_METRICS: tuple[str, ...] = (
    "alpha_star_layer",
    "alpha_star_mean",
    "rho_layer",
    "m1_cosine",
    "m2_total_variance",
    "vr_variance_ratio",
)
"""Whole-model metrics sent to the loggers as ``gradvar/<metric>`` (``vr_*`` at each alpha:
``gradvar/vr_variance_ratio@1.0``)."""

MEASURED_METRIC = "alpha_measured"
_FIRST_AUTO_EVERY = 20  # steps before the first probe when every="auto": a cost sample
LogFn = Callable[[Mapping[str, float], int], None]
LossFn = Callable[[Any, Any], Tensor]
"""``loss_fn(model(inputs), targets)`` → the mean loss, as for :class:`~gradvar.Probe`."""


def checkpoint_label(step: int) -> str:
    """The ``checkpoint`` column of a monitored step: ``"step-000123"``."""
    return f"step-{step:06d}"


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class Monitor:
    """Probe a fixed probe set every ``every`` optimizer steps while training.

    Args:
        model: the module being trained (its current parameters are θ).
        loss_fn: ``loss_fn(model(inputs), targets)``, as for :class:`~gradvar.Probe`.
        data: the probe set: one (inputs, targets) pair or an iterable of pairs; materialised
            once, so every probe sees exactly the same examples (and dropout draws).
        every: k, steps between probes, or ``"auto"``: a first probe after 20 steps (to
            measure its cost), then after each probe the k that brings the total probe time
            back within ``max_overhead`` of the training time by the next one (steady state:
            ``k ≈ probe seconds / (max_overhead · seconds per step)``).
        out: records file (Parquet, or ``.csv``) to append to; None keeps them in memory
            (:attr:`records`).
        run: the ``run`` column.
        optimizer: the training optimizer. If it holds a snapshot (``AlphaSVRG``) the probe
            pairs θ with it; if it measures alpha, its :meth:`~gradvar.AlphaSVRG.alpha_log` is
            appended as ``alpha_measured`` rows (one per step and layer).
        log: ``log(metrics, step)`` receives the headline metrics (``gradvar/...``), the
            overhead and k after every probe (rank 0 only); e.g. a TensorBoard writer's
            ``lambda m, s: [writer.add_scalar(k, v, s) for k, v in m.items()]``.
        max_overhead: the fraction of training time ``every="auto"`` allows the probe.
        start_step: the optimizer step the monitor starts at (its first reference weights).
        steps_per_epoch: to fill the ``epoch`` column (otherwise left empty unless given to
            :meth:`step`).
        alphas: alphas for ``vr_variance``.
        probe_options: passed to :class:`~gradvar.Probe` (unit, layers, chunk_size, seed, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        data: Any,
        *,
        every: int | str = "auto",
        out: str | os.PathLike[str] | None = None,
        run: str = "run",
        optimizer: torch.optim.Optimizer | None = None,
        log: LogFn | None = None,
        max_overhead: float = 0.1,
        start_step: int = 0,
        steps_per_epoch: int | None = None,
        alphas: Iterable[float] = (1.0,),
        **probe_options: Any,
    ) -> None:
        if every != "auto" and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise InvalidArgumentError(
                f"every must be a positive number of steps or 'auto', got every={every!r}"
            )
        if not 0 < max_overhead < 1:
            raise InvalidArgumentError(
                f"max_overhead must be a fraction in (0, 1), e.g. 0.1, got {max_overhead!r}"
            )
        self.model, self.optimizer, self.run, self.log = model, optimizer, run, log
        self.out = Path(out) if out is not None else None
        self.auto = every == "auto"
        self.every: int = _FIRST_AUTO_EVERY if self.auto else int(every)
        self.max_overhead = max_overhead
        self.steps_per_epoch = steps_per_epoch
        self.alphas = [float(a) for a in alphas]
        self.batches = [(b[0], b[1]) for b in as_batches(data)]
        if not self.batches:
            raise InvalidArgumentError("data (the probe set) is empty: nothing to probe")
        probe_options.setdefault("progress", False)
        self.probe = Probe(model, loss_fn, **probe_options)
        self.records = to_frame([])
        self.is_writer = _rank() == 0
        self.probe_seconds = 0.0
        self.train_seconds = 0.0
        self.num_probes = 0
        self._start_step = self._step = self._last_probe = start_step
        self._reference: tuple[int, dict[str, Tensor]] | None = None
        if self._optimizer_snapshot() is None:
            self._reference = (start_step, self._copy_weights())
        self._clock = time.perf_counter()

    # ------------------------------------------------------------------ public

    @property
    def overhead(self) -> float:
        """Probe time as a fraction of training time (probes excluded) so far."""
        return self.probe_seconds / self.train_seconds if self.train_seconds > 0 else math.nan

    def step(self, step: int | None = None, *, epoch: float | None = None) -> pd.DataFrame | None:
        """Call after every optimizer step; probes when k steps have passed since the last.

        ``step``: the optimizer steps done so far (default: one more than the last call).
        Returns the new records when it probed, else None.
        """
        now = time.perf_counter()
        self.train_seconds += now - self._clock
        self._step = self._step + 1 if step is None else int(step)
        frame = None
        if self._step - self._last_probe >= self.every:
            frame = self.probe_now(self._step, epoch=epoch)
        self._clock = time.perf_counter()
        return frame

    def probe_now(self, step: int, *, epoch: float | None = None) -> pd.DataFrame:
        """Probe at ``step`` now, append and log the records, and return them."""
        started = time.perf_counter()
        snapshot, snapshot_step = self._pairing()
        result = self.probe.run(self.batches, snapshot=snapshot, alphas=self.alphas)
        if epoch is None and self.steps_per_epoch:
            epoch = step / self.steps_per_epoch
        frame = result.to_frame(
            run=self.run,
            checkpoint=checkpoint_label(step),
            step=step,
            epoch=epoch,
            snapshot_step=snapshot_step,
        )
        frame = pd.concat([frame, self._measured_rows()], ignore_index=True)
        if self._optimizer_snapshot() is None:
            self._reference = (step, self._copy_weights())
        self._last_probe = step
        self.records = pd.concat([self.records, frame], ignore_index=True)
        if self.is_writer and self.out is not None:
            self._append(frame)
        self.num_probes += 1
        self.probe_seconds += time.perf_counter() - started
        if self.auto:
            self.every = self._auto_every()
        if self.is_writer and self.log is not None:
            self.log(self.headline(result), step)
        return frame

    def headline(self, result: ProbeResult) -> dict[str, float]:
        """The values logged after a probe: whole-model headline metrics, overhead and k."""
        out: dict[str, float] = {}
        for (layer, metric, alpha), value in result.values.items():
            if layer == WHOLE_MODEL and metric in HEADLINE_METRICS:
                out[f"gradvar/{metric}" + ("" if alpha is None else f"@{alpha}")] = value
        measured = self.records[self.records["metric"] == MEASURED_METRIC]
        if not measured.empty:
            last = measured[measured["step"] == measured["step"].max()]
            out["gradvar/alpha_measured_mean"] = float(last["value"].mean())
        out["gradvar/overhead"] = self.overhead
        out["gradvar/every"] = float(self.every)
        return out

    # ------------------------------------------------------------------ internals

    def _copy_weights(self) -> dict[str, Tensor]:
        return {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def _optimizer_snapshot(self) -> tuple[tuple[Tensor, ...], int] | None:
        snapshot = getattr(self.optimizer, "snapshot", None)
        step = getattr(self.optimizer, "snapshot_step", None)
        return None if snapshot is None or step is None else (snapshot, int(step))

    def _pairing(self) -> tuple[dict[str, Tensor], int]:
        """θ̃ as a state dict and its step: the optimizer's snapshot, else the kept weights."""
        held = self._optimizer_snapshot()
        if held is None:
            assert self._reference is not None  # kept whenever the optimizer has no snapshot
            step, weights = self._reference
            return weights, step
        tensors, step = held
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        by_id = {id(p): t for p, t in zip(params, tensors)}
        named = dict(self.model.named_parameters())
        missing = [n for n, p in named.items() if id(p) not in by_id]
        if missing:
            raise InvalidArgumentError(
                f"the optimizer's snapshot covers none of the model's parameters {missing[:5]}: "
                "pass the optimizer that trains this model (or optimizer=None to pair with "
                "the weights k steps back)"
            )
        return {n: by_id[id(p)] for n, p in named.items()}, step

    def _measured_rows(self) -> pd.DataFrame:
        """The optimizer's measured alphas since the last probe, as records rows."""
        alpha_log = getattr(self.optimizer, "alpha_log", None)
        rows = [] if alpha_log is None else alpha_log(clear=True)
        return to_frame(
            {
                "run": self.run,
                "checkpoint": checkpoint_label(r["step"]),
                "step": r["step"],
                "epoch": r["step"] / self.steps_per_epoch if self.steps_per_epoch else None,
                "snapshot_step": r["snapshot_step"],
                "layer": r["layer"],
                "metric": MEASURED_METRIC,
                "value": r["alpha"],
                "n": round(r["pairs"]),
                "unit": None,
            }
            for r in rows
        )

    def _append(self, frame: pd.DataFrame) -> None:
        """Read the file, replace this run's rows at the same checkpoints and metrics, write —
        under the records file's lock, so a concurrent ``analyze`` or Monitor loses nothing."""
        assert self.out is not None
        with locked(self.out):
            self._merge_into_file(frame)

    def _merge_into_file(self, frame: pd.DataFrame) -> None:
        assert self.out is not None
        if self.out.exists():
            existing = read_records(self.out)
            keys = ["run", "checkpoint", "metric"]
            replaced = frame[keys].drop_duplicates().assign(_replaced=True)
            marked = existing.merge(replaced, on=keys, how="left")["_replaced"]
            keep = ~marked.fillna(False).to_numpy(dtype=bool)
            frame = pd.concat([existing[keep], frame], ignore_index=True)
        write_records(frame, self.out)

    def _auto_every(self) -> int:
        """Steps until the next probe such that, at the costs seen so far, the total probe
        time stays within ``max_overhead`` of the training time when that probe is done:
        ``k = ceil(((P + p) / max_overhead − T) / t)`` with P the probe seconds so far, p
        their mean, T the training seconds so far and t the seconds per step (at least 1).
        The same on every rank (rank 0's value is broadcast)."""
        steps = max(self._step - self._start_step, 1)
        per_step = self.train_seconds / steps
        per_probe = self.probe_seconds / max(self.num_probes, 1)
        budget = (self.probe_seconds + per_probe) / self.max_overhead - self.train_seconds
        every = max(1, math.ceil(budget / per_step)) if per_step > 0 else 1
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            device = next(self.model.parameters()).device
            shared = torch.tensor([every], device=device)
            dist.broadcast(shared, src=0)
            every = int(shared.item())
        return every
