"""The record format: the tidy table every part of gradvar reads and writes.

One row per (run, checkpoint, layer, metric, alpha). Columns, in order::

    run, checkpoint, step, epoch, snapshot_step, layer, metric, value, n, unit, alpha

``alpha`` is NaN except for the ``vr_*`` metrics, where it is the alpha the variance was
evaluated at. ``unit`` is ``"sample"`` or the mini-batch size as a string (``"128"``).
Optional columns ``ci_low`` and ``ci_high`` may follow. Saved as Parquet (CSV on request);
writes are atomic (temporary file + ``os.replace``) so an interrupted job never leaves a
half-written table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gradvar._files import atomic_path
from gradvar.errors import InvalidArgumentError

__all__ = [
    "COLUMNS",
    "METRICS",
    "WHOLE_MODEL",
    "empty_frame",
    "off_snapshot",
    "to_frame",
    "read_records",
    "write_records",
    "validate",
]

WHOLE_MODEL = "__all__"

COLUMNS: tuple[str, ...] = (
    "run",
    "checkpoint",
    "step",
    "epoch",
    "snapshot_step",
    "layer",
    "metric",
    "value",
    "n",
    "unit",
    "alpha",
)

METRICS: tuple[str, ...] = (
    "m1_cosine",
    "m2_total_variance",
    "m3_top_eigenvalue",
    "rho_mean",
    "rho_layer",
    "alpha_star_mean",
    "alpha_star_layer",
    "alpha_star_mean_ref",
    "vr_variance",
    "vr_variance_ratio",
    "grad_norm_sq",
    "gns_simple",
    "gsnr_mean",
    "nonfinite_skipped",
    "alpha_measured",
)

_DTYPES: dict[str, Any] = {
    "run": "string",
    "checkpoint": "string",
    "step": "Int64",
    "epoch": "float64",
    "snapshot_step": "Int64",
    "layer": "string",
    "metric": "string",
    "value": "float64",
    "n": "Int64",
    "unit": "string",
    "alpha": "float64",
}


def empty_frame() -> pd.DataFrame:
    """An empty table with the record columns and dtypes."""
    return pd.DataFrame({c: pd.Series(dtype=_DTYPES[c]) for c in COLUMNS})


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Build a record table from dict rows; missing columns become null, dtypes are fixed."""
    frame = pd.DataFrame(list(rows))
    if frame.empty:
        return empty_frame()
    for column in COLUMNS:
        if column not in frame:
            frame[column] = np.nan if _DTYPES[column] == "float64" else None
    extra = [c for c in frame.columns if c not in COLUMNS]
    frame = frame[list(COLUMNS) + extra]
    return frame.astype({c: _DTYPES[c] for c in COLUMNS})


def validate(frame: pd.DataFrame) -> pd.DataFrame:
    """Check that ``frame`` has the record columns; return it with canonical dtypes."""
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise InvalidArgumentError(
            f"records table is missing columns {missing}; expected at least {list(COLUMNS)} "
            "(produce it with ProbeResult.to_frame() or gradvar.analyze)"
        )
    return frame.astype({c: _DTYPES[c] for c in COLUMNS})


def off_snapshot(records: pd.DataFrame) -> pd.DataFrame:
    """The rows of checkpoints not taken at their snapshot (step != snapshot_step, or unknown).

    At a snapshot ρ = α* = 1 by construction, so averages over checkpoints, curves and
    findings leave those rows out; when every row is at a snapshot the result is empty.
    """
    at_snapshot = (records["step"] == records["snapshot_step"]).fillna(False).astype(bool)
    return records[~at_snapshot.to_numpy()]


def write_records(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``frame`` to ``path`` atomically: Parquet, or CSV if the suffix is ``.csv``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)
    return path


def read_records(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a records table written by :func:`write_records` (Parquet or CSV)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no records file at {str(path)!r}")
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return validate(frame)
