"""Selecting the rows a figure draws: metric, runs, layers, one unit; layers in model order.

Layers appear in *model order* (first appearance in the records, ``__all__`` last); depth
counts one layer per module, weights only (:func:`depth_layers`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from gradvar.errors import InvalidArgumentError
from gradvar.records import WHOLE_MODEL, validate

_Filter = str | Sequence[str] | None
_LABELS = {
    "m1_cosine": "metric 1: directional variance",
    "m2_total_variance": "metric 2: total variance",
    "m3_top_eigenvalue": "metric 3: top eigenvalue",
    "rho_mean": "ρ (mean over coordinates)",
    "rho_layer": "ρ (per layer)",
    "alpha_star_mean": "α* (mean over coordinates)",
    "alpha_star_layer": "α* (per layer)",
    "alpha_measured": "α measured by AlphaSVRG (per layer)",
    "vr_variance": "Var(v)",
    "vr_variance_ratio": "Var(v) / Var(g)",
}


def layer_order(records: pd.DataFrame) -> list[str]:
    """Layers in model order (first appearance in ``records``), ``__all__`` last."""
    seen = [str(layer) for layer in pd.unique(records["layer"].dropna())]
    layers = [layer for layer in seen if layer != WHOLE_MODEL]
    return layers + [WHOLE_MODEL] if WHOLE_MODEL in seen else layers


_NORM_WORDS = {"bn", "norm", "ln", "gn", "layernorm", "batchnorm", "groupnorm", "rmsnorm"}


def _is_norm(layer: str, kinds: Mapping[str, Sequence[str]] | None) -> bool:
    if kinds is not None and layer in kinds:
        return any("Norm" in kind for kind in kinds[layer])
    words = re.split(r"[._\d]+", layer.lower())
    return any(w in _NORM_WORDS or w.endswith("norm") for w in words)


def depth_layers(
    layers: Sequence[str],
    *,
    include_bias: bool = False,
    kinds: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """The layers that count for depth: one per module, weights only.

    ``__all__`` is dropped; so are ``*.bias`` tensors (a bias shares its weight's depth and
    holds few coordinates) unless ``include_bias``, and normalisation layers (their weights
    are per-channel scales, not a depth of the network): by ``kinds`` (layer -> module class
    names, as ``analyze`` records them) when given, else by names such as ``bn1``, ``norm``,
    ``ln_f``. When nothing else is left, the dropped layers are kept.
    """
    layers = [layer for layer in layers if layer != WHOLE_MODEL]
    weights = [
        layer
        for layer in layers
        if (include_bias or not layer.endswith(".bias")) and not _is_norm(layer, kinds)
    ]
    return weights or layers


def _checked(records: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(records, pd.DataFrame):
        raise InvalidArgumentError(
            f"records must be a pandas DataFrame, got {type(records).__name__}; "
            "load one with gradvar.records.read_records(path)"
        )
    frame = validate(records)
    if frame.empty:
        raise InvalidArgumentError("records table is empty: there is nothing to plot")
    return frame


def _as_list(wanted: _Filter) -> list[str] | None:
    return [wanted] if isinstance(wanted, str) else None if wanted is None else list(wanted)


def _subset(rows: pd.DataFrame, column: str, wanted: _Filter, metric: str) -> pd.DataFrame:
    names = _as_list(wanted)
    if names is None:
        return rows
    available = [str(v) for v in pd.unique(rows[column].dropna())]
    missing = [name for name in names if name not in available]
    if missing:
        raise InvalidArgumentError(
            f"no rows with {column} in {missing} for metric={metric!r}; "
            f"{column}s present: {available}"
        )
    return rows[rows[column].isin(names).fillna(False).to_numpy(dtype=bool)]


def _metric_rows(
    frame: pd.DataFrame,
    metric: str,
    *,
    runs: _Filter = None,
    layers: _Filter = None,
    unit: str | int | None = None,
) -> pd.DataFrame:
    """The finite rows of ``metric`` after the run, layer and unit filters, in one unit."""
    rows = _rows_with(frame, "metric", metric)
    if rows.empty:
        present = sorted(str(m) for m in pd.unique(frame["metric"].dropna()))
        raise InvalidArgumentError(
            f"records have no rows with metric={metric!r}; metrics present: {present}"
        )
    rows = _subset(rows, "run", runs, metric)
    rows = _subset(rows, "layer", layers, metric)
    units = [str(u) for u in pd.unique(rows["unit"].dropna())]
    if unit is not None:
        rows = _subset(rows, "unit", str(unit), metric)
    elif len(units) > 1:
        raise InvalidArgumentError(
            f"rows of metric={metric!r} mix units {units}; values at different units are not "
            "comparable (variance scales by 1/b for mini-batches of b): pass unit=one of them"
        )
    rows = rows.dropna(subset=["step", "value"])
    rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
    if rows.empty:
        raise InvalidArgumentError(f"rows of metric={metric!r} hold no finite value with a step")
    return rows


def _rows_with(rows: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    return rows[rows[column].eq(value).fillna(False).to_numpy(dtype=bool)]


def _ordered(values: pd.Series) -> list[str]:
    return [str(v) for v in pd.unique(values.dropna())]


def _unit_of(rows: pd.DataFrame) -> str:
    units = _ordered(rows["unit"])
    text = ", ".join("sample" if u == "sample" else f"mini-batch of {u}" for u in units)
    return f"unit: {text or 'unknown'}"


def _curve(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) sorted by step, duplicates at one step averaged."""
    by_step = rows.groupby("step", sort=True)["value"].mean()
    return by_step.index.to_numpy(dtype=float), by_step.to_numpy(dtype=float)


def _label(metric: str) -> str:
    return _LABELS.get(metric, metric)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
