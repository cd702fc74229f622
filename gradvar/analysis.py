"""analyze: run a Probe over every checkpoint of a saved run and keep the records on disk.

    records = gradvar.analyze("runs/mlp4-sgd", lambda: zoo.build_model("mlp4", ...), data,
                              F.cross_entropy, out="runs/mlp4-sgd/records.parquet")

- Every checkpoint sees the same examples, in the same chunks, with the same dropout draws
  (common random numbers): the data is materialised once and each chunk's randomness is
  seeded by its index.
- The table is rewritten atomically after each checkpoint; re-running skips checkpoints
  already in it, so an interrupted analysis loses at most the checkpoint in progress and
  never duplicates rows.
- Under ``torchrun`` (a process group is initialised) the chunks are split across ranks and
  the sums all-reduced; rank 0 writes the file, and the records equal one process's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradvar._data import as_batches
from gradvar.checkpoints import Checkpoint, CheckpointSeries, check_compatible
from gradvar.errors import InvalidArgumentError
from gradvar.grads._loss import LossFn
from gradvar.probe import Probe, ProbeResult
from gradvar.records import empty_frame, read_records, write_records
from gradvar.schedules import from_dict

__all__ = ["analyze"]


def _materialise(data: Any) -> list[tuple[Tensor, Tensor]]:
    batches = [(b[0], b[1]) for b in as_batches(data)]
    if not batches:
        raise InvalidArgumentError("data is empty: nothing to probe")
    return batches


def _alpha_in_force(run_config: Mapping[str, Any], step: int) -> float | None:
    """The alpha the training run used at ``step`` (from run.json), if it used alpha-SVRG."""
    if run_config.get("vr", "none") in (None, "none") or "alpha" not in run_config:
        return None
    alpha = run_config["alpha"]
    schedule = from_dict(alpha) if isinstance(alpha, Mapping) else None
    return float(schedule(step)) if schedule is not None else float(alpha)


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def analyze(
    series: CheckpointSeries | str | os.PathLike[str],
    model_fn: Callable[[], nn.Module] | nn.Module,
    data: Any,
    loss_fn: LossFn,
    *,
    out: str | os.PathLike[str] | None = None,
    run: str | None = None,
    alphas: Iterable[float] = (1.0,),
    resume: bool = True,
    progress: bool | None = None,
    device: str | torch.device | None = None,
    snapshot_interval: int | None = None,
    on_result: Callable[[ProbeResult, Checkpoint, Checkpoint | None], None] | None = None,
    **probe_options: Any,
) -> pd.DataFrame:
    """Records (DESIGN.md format) for every checkpoint of ``series``, paired with its snapshot.

    Args:
        series: a :class:`CheckpointSeries` or a run directory.
        model_fn: builds the model the checkpoints belong to (or the model itself).
        data: the examples to probe: one (inputs, targets) pair or an iterable of pairs;
            materialised once, so every checkpoint sees exactly the same batches.
        loss_fn: ``loss_fn(outputs, targets)``.
        out: Parquet (or ``.csv``) file, rewritten atomically after each checkpoint; with
            ``resume`` the checkpoints already in it are skipped. A ``.json`` beside it
            records the pairing and the probe's configuration.
        run: the ``run`` column (default: the run directory's name).
        alphas: alphas for ``vr_variance``; the alpha the run used at each step (run.json) is
            added automatically.
        device: where to probe (default: CPU, or the model's device if given a module).
        snapshot_interval: pair step t with the checkpoint at the last multiple of K ≤ t
            (when ``series`` is a path; otherwise build the series with it).
        on_result: called as ``on_result(result, checkpoint, snapshot)`` after each probe, to
            keep what the records do not (e.g. ``result.optimal_alpha()`` tensors).
        probe_options: passed to :class:`Probe` (unit, layers, batchnorm, chunk_size, ...).
    """
    if not isinstance(series, CheckpointSeries):
        series = CheckpointSeries(series, snapshot_interval=snapshot_interval)
    pairs = series.pairs()  # resolves every pairing before any work, so a gap fails early
    model = model_fn if isinstance(model_fn, nn.Module) else model_fn()
    if device is not None:
        model = model.to(device)
    batches = _materialise(data)
    run = run if run is not None else series.path.resolve().name
    out_path = Path(out) if out is not None else None
    records = empty_frame()
    if out_path is not None and out_path.exists() and resume:
        records = read_records(out_path)
    probe_options.setdefault("progress", False if progress is False else None)
    probe = Probe(model, loss_fn, **probe_options)
    # A checkpoint is done for this run *and unit*: one file may hold several units.
    mine = records[(records["run"] == run) & (records["unit"] == probe.unit)]
    done = set(mine["checkpoint"].dropna())
    todo = [(c, s) for c, s in pairs if c.name not in done]
    is_writer = _rank() == 0
    bar = tqdm(
        todo,
        desc=f"gradvar analyze {run}",
        unit="ckpt",
        disable=True
        if (progress is False or not is_writer)
        else (None if progress is None else False),
    )
    # Checked before each probe, so a checkpoint that does not fit fails before any work on
    # it; the snapshot state is kept while consecutive checkpoints share it (one read each).
    kept: tuple[Path, dict[str, Tensor]] | None = None
    for checkpoint, snapshot in bar:
        state = checkpoint.load()
        check_compatible(model, state, checkpoint.path)
        if snapshot is not None and (kept is None or kept[0] != snapshot.path):
            loaded = state if snapshot.path == checkpoint.path else snapshot.load()
            check_compatible(model, loaded, snapshot.path)
            kept = (snapshot.path, loaded)
        snap_state = kept[1] if snapshot is not None and kept is not None else None
        model.load_state_dict(state)
        extra = _alpha_in_force(series.run_config, checkpoint.step)
        at = list(dict.fromkeys([*alphas, *([extra] if extra is not None else [])]))
        result = probe.run(batches, snapshot=snap_state, alphas=at)
        frame = result.to_frame(
            run=run,
            checkpoint=checkpoint.name,
            step=checkpoint.step,
            epoch=checkpoint.epoch,
            snapshot_step=None if snapshot is None else snapshot.step,
        )
        if on_result is not None:
            on_result(result, checkpoint, snapshot)
        records = frame if records.empty else pd.concat([records, frame], ignore_index=True)
        if out_path is not None and is_writer:
            write_records(records, out_path)
            _write_sidecar(out_path, series, result.config)
    return records


def _write_sidecar(out: Path, series: CheckpointSeries, config: Mapping[str, Any]) -> None:
    meta = {
        "run_dir": str(series.path),
        "pairing": series.pairing,
        "probe": dict(config),
        "run_config": series.run_config,
    }
    tmp = out.with_name(f".{out.name}.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, out.with_suffix(out.suffix + ".json"))
