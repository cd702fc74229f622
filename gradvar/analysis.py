"""analyze: run a Probe over every checkpoint of a saved run and keep the records on disk.

    records = gradvar.analyze("runs/mlp4-sgd", lambda: zoo.build_model("mlp4", ...), data,
                              F.cross_entropy, out="runs/mlp4-sgd/records.parquet")

- Every checkpoint sees the same examples, in the same chunks, with the same dropout draws
  (common random numbers): the data is materialised once and each chunk's randomness is
  seeded by its index. Bad data fails with a named error before any work
  (:mod:`gradvar._validation`).
- Checkpoints are read in whatever layout the run saved them (:mod:`gradvar.checkpoints`);
  wrapper key prefixes (``module.``, ``_orig_mod.``, ``model.``, or ``strip_prefix``) are
  matched against the model's keys, and the one stripped is recorded in the sidecar.
- The records file is updated under a lock after each checkpoint, so several analyses may
  write different runs into one file; re-running resumes where the settings, data and files
  are unchanged, recomputes a checkpoint whose file changed, and refuses changed settings
  with an error that says how to resume or overwrite (:mod:`gradvar._resume`).
- Under ``torchrun`` (a process group is initialised) the chunks are split across ranks and
  the sums all-reduced; rank 0 writes the file, and the records equal one process's.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from gradvar._data import as_batches
from gradvar._resume import Resume, data_digest
from gradvar._validation import check_probe_data
from gradvar.checkpoints import Checkpoint, CheckpointSeries, check_compatible, match_keys
from gradvar.errors import InvalidArgumentError
from gradvar.grads._loss import LossFn
from gradvar.probe import Probe, ProbeResult
from gradvar.records import empty_frame
from gradvar.schedules import from_dict

__all__ = ["analyze", "layer_kinds"]


def _materialise(data: Any) -> list[tuple[Tensor, Tensor]]:
    batches = [(b[0], b[1]) for b in as_batches(data)]
    if not batches:
        raise InvalidArgumentError("data is empty: nothing to probe; pass at least 2 examples")
    return batches


def _alpha_in_force(run_config: Mapping[str, Any], step: int) -> float | None:
    """The alpha the training run used at ``step`` (from run.json), if it used alpha-SVRG."""
    if run_config.get("vr", "none") in (None, "none") or "alpha" not in run_config:
        return None
    alpha = run_config["alpha"]
    schedule = from_dict(alpha) if isinstance(alpha, Mapping) else None
    return float(schedule(step)) if schedule is not None else float(alpha)


def _distributed() -> tuple[int, bool]:
    import torch.distributed as dist

    on = dist.is_available() and dist.is_initialized()
    return (dist.get_rank() if on else 0), on


def _name_of(fn: Any) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    return f"{getattr(target, '__module__', '')}.{name}".lstrip(".")


def layer_kinds(model: nn.Module, groups: Mapping[str, Iterable[str]]) -> dict[str, list[str]]:
    """Layer -> the classes of the modules owning its parameters (``["BatchNorm2d"]``)."""
    owner = {
        f"{prefix}.{name}" if prefix else name: type(module).__name__
        for prefix, module in model.named_modules()
        for name, _ in module.named_parameters(recurse=False)
    }
    return {layer: sorted({owner.get(p, "?") for p in params}) for layer, params in groups.items()}


def _settings(
    series: CheckpointSeries,
    probe: Probe,
    model: nn.Module,
    loss_fn: LossFn,
    batches: list[tuple[Tensor, Tensor]],
    alphas: list[float],
    strip_prefix: str | None,
) -> dict[str, Any]:
    """Everything besides the checkpoint files that changes the numbers (see _resume)."""
    return {
        "run_dir": str(series.path.resolve()),
        "pairing": series.pairing,
        "weights": series.weights,
        "strip_prefix": strip_prefix,
        "data": data_digest(batches),
        "n": sum(int(x.shape[0]) for x, _ in batches),
        "unit": probe.unit,
        "layers": {k: list(v) for k, v in probe.groups.items()},
        "batchnorm": probe.batchnorm,
        "mode": probe.mode,
        "top_eigenvalue": probe.top_eigenvalue,
        "seed": probe.seed,
        "chunk": probe.chunk,
        "skip_nonfinite": probe.skip_nonfinite,
        "transform": None if probe.transform is None else _name_of(probe.transform),
        "alphas": sorted(alphas),
        "loss": _name_of(loss_fn),
        "model": _name_of(type(model)),
    }


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
    strip_prefix: str | None = None,
    on_result: Callable[[ProbeResult, Checkpoint, Checkpoint | None], None] | None = None,
    **probe_options: Any,
) -> pd.DataFrame:
    """Records (the record format, see README) for every checkpoint of ``series``.

    Returns this run's rows; with ``out``, the whole records file after they were merged
    into it (rows of other runs and units included).

    Args:
        series: a :class:`CheckpointSeries` or a run folder (any layout it reads).
        model_fn: builds the model the checkpoints belong to (or the model itself).
        data: the examples to probe: one (inputs, targets) pair or an iterable of pairs;
            materialised once, so every checkpoint sees exactly the same batches.
        loss_fn: ``loss_fn(outputs, targets)``.
        out: Parquet (or ``.csv``) file, updated under a lock after each checkpoint; other
            runs' rows in it are kept. ``OUT.json`` beside it records, per run, the pairing,
            the settings and each checkpoint's file digest and stripped key prefix.
        run: the ``run`` column (default: the run folder's name).
        alphas: alphas for ``vr_variance``; the alpha the run used at each step (run.json) is
            added automatically.
        resume: reuse rows of ``out`` computed with the same settings from the same files;
            False recomputes this run's rows (and only this run's).
        device: where to probe (default: CPU, or the model's device if given a module).
        snapshot_interval: pair step t with the checkpoint at the last multiple of K ≤ t
            steps (when ``series`` is a path; otherwise build the series with it).
        strip_prefix: a key prefix to strip from the checkpoints' keys, tried before the
            usual wrapper prefixes.
        on_result: called as ``on_result(result, checkpoint, snapshot)`` after each probe, to
            keep what the records do not (e.g. ``result.optimal_alpha()`` tensors).
        probe_options: passed to :class:`Probe` (unit, layers, batchnorm, chunk_size, ...).
    """
    if not isinstance(series, CheckpointSeries):
        series = CheckpointSeries(series, snapshot_interval=snapshot_interval)
    pairs = series.pairs()  # every pairing resolved before any work, so a gap fails early
    model = model_fn if isinstance(model_fn, nn.Module) else model_fn()
    if device is not None:
        model = model.to(device)
    batches = _materialise(data)
    probe_options.setdefault("progress", False if progress is False else None)
    probe = Probe(model, loss_fn, **probe_options)
    check_probe_data(model, loss_fn, batches, unit_size=probe.unit_size)
    run = run if run is not None else series.path.resolve().name
    alphas = [float(a) for a in alphas]
    rank, distributed = _distributed()
    digests: dict[Path, str] = {}

    def digest(checkpoint: Checkpoint) -> str:
        if checkpoint.path not in digests:
            digests[checkpoint.path] = checkpoint.digest()
        return digests[checkpoint.path]

    state = None
    if out is not None:
        settings = _settings(series, probe, model, loss_fn, batches, alphas, strip_prefix)
        on_disk = {c.name: digest(c) for c, _ in pairs}
        state = Resume(
            Path(out), run, probe.unit, settings, resume=resume, writer=rank == 0, digests=on_disk
        )

    todo = []
    for checkpoint, snapshot in pairs:
        identity = {
            "digest": digest(checkpoint) if state is not None else None,
            "snapshot": None if snapshot is None else snapshot.name,
            "snapshot_digest": digest(snapshot) if state and snapshot is not None else None,
        }
        if state is None or not state.is_done(checkpoint.name, identity):
            todo.append((checkpoint, snapshot, identity))
    if distributed:  # every rank has planned before rank 0 writes anything
        import torch.distributed as dist

        dist.barrier()
    run_entry = {
        "run_dir": str(series.path.resolve()),
        "pairing": series.pairing,
        "pairing_note": series.pairing_note,
        "skipped": [list(s) for s in series.skipped],
        "notes": list(series.notes),
        "run_config": series.run_config,
        "layer_kinds": layer_kinds(model, probe.groups),
    }
    bar = tqdm(
        todo,
        desc=f"gradvar analyze {run}",
        unit="ckpt",
        disable=True if (progress is False or rank != 0) else (None if progress is None else False),
    )
    frames = []
    kept: tuple[Path, dict[str, Tensor]] | None = None  # the snapshot, while checkpoints share it
    for checkpoint, snapshot, identity in bar:
        weights, prefix = match_keys(model, checkpoint.load(), prefix=strip_prefix)
        check_compatible(model, weights, checkpoint.path)
        if snapshot is not None and (kept is None or kept[0] != snapshot.path):
            loaded = weights
            if snapshot.path != checkpoint.path:
                loaded = match_keys(model, snapshot.load(), prefix=strip_prefix)[0]
            check_compatible(model, loaded, snapshot.path)
            kept = (snapshot.path, loaded)
        snap_state = kept[1] if snapshot is not None and kept is not None else None
        model.load_state_dict(weights)
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
        frames.append(frame)
        if state is not None:
            entry = {**run_entry, "probe": dict(result.config)}
            state.commit(frame, checkpoint.name, {**identity, "prefix": prefix}, entry)
    if state is not None:
        return state.read()
    return pd.concat(frames, ignore_index=True) if frames else empty_frame()
