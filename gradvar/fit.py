"""Fit an alpha schedule to measured α* (numpy, scipy and pandas only: never torch).

Each candidate kind is fitted by bounded least squares (``scipy.optimize.least_squares``)
on the interval grid of :mod:`gradvar.schedules` (``hold`` steps per snapshot interval,
``total_steps`` in all); the candidates are compared by Gaussian AIC, ``n·log(RSS/n) + 2k``.

Kinds and their free parameters (all alpha-valued parameters bounded to [0, 2]):

- ``constant``: ``value``
- ``linear``: ``start``, ``end`` → :class:`~gradvar.schedules.Linear`
- ``quadratic``: ``start``, ``end`` → :class:`~gradvar.schedules.Quadratic`
- ``geometric``: ``start``, ``ratio`` ∈ [1e-6, 1] → :class:`~gradvar.schedules.Geometric`
- ``fitted``: ``start``, ``end``, ``inner_end`` ∈ [0, 1], ``inner_power`` ∈ [0.05, 20] →
  :class:`~gradvar.schedules.Fitted`, a linear trend × decay inside every snapshot interval
  (the sawtooth measured α* shows). Needs the within-interval position: ``snapshot_step`` in
  the data, or ``hold``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from gradvar.errors import InvalidArgumentError
from gradvar.records import WHOLE_MODEL
from gradvar.schedules import (
    Constant,
    Fitted,
    Geometric,
    Linear,
    PerLayer,
    Quadratic,
    Schedule,
)

__all__ = ["KINDS", "FitReport", "FitResult", "fit_schedule"]

KINDS: tuple[str, ...] = ("constant", "linear", "quadratic", "geometric", "fitted")

# Residual variance floor, relative to the data's scale: fits that are exact to solver
# precision tie (AIC would be log 0 = -inf) and the penalty 2k then prefers the simpler kind.
_RELATIVE_NOISE_FLOOR = 1e-7
_ALPHA_BOUNDS = (0.0, 2.0)


@dataclass(frozen=True, eq=False)
class FitReport:
    """One candidate's fit. ``aic = n·log(max(rss/n, floor)) + 2k`` with k = len(params)."""

    kind: str
    params: dict[str, float]
    r2: float
    aic: float
    rss: float
    n: int
    residuals: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (residuals as a list)."""
        return {
            "kind": self.kind,
            "params": dict(self.params),
            "r2": self.r2,
            "aic": self.aic,
            "rss": self.rss,
            "n": self.n,
            "residuals": self.residuals.tolist(),
        }


@dataclass(frozen=True, eq=False)
class FitResult:
    """The chosen schedule, its report and every candidate's report.

    With ``per_layer=True``: ``schedule`` is a :class:`~gradvar.schedules.PerLayer`,
    ``report`` maps layer → report and ``candidates`` maps layer → kind → report (the
    ``default`` schedule's fit is under the layer it was fitted on).
    """

    schedule: Schedule
    report: FitReport | dict[str, FitReport]
    candidates: dict[str, FitReport] | dict[str, dict[str, FitReport]]
    layer: str = WHOLE_MODEL
    per_layer: bool = False

    def table(self) -> pd.DataFrame:
        """One row per (layer, kind): n, k, rss, r2, aic, delta_aic, chosen, params."""
        by_layer: dict[str, dict[str, FitReport]]
        chosen: dict[str, str]
        if self.per_layer:
            by_layer = self.candidates  # type: ignore[assignment]
            chosen = {name: r.kind for name, r in self.report.items()}  # type: ignore[union-attr]
        else:
            by_layer = {self.layer: self.candidates}  # type: ignore[dict-item]
            chosen = {self.layer: self.report.kind}  # type: ignore[union-attr]
        rows = []
        for name, reports in by_layer.items():
            best = min(r.aic for r in reports.values())
            for r in reports.values():
                rows.append(
                    {
                        "layer": name,
                        "kind": r.kind,
                        "n": r.n,
                        "k": len(r.params),
                        "rss": r.rss,
                        "r2": r.r2,
                        "aic": r.aic,
                        "delta_aic": r.aic - best,
                        "chosen": r.kind == chosen[name],
                        "params": dict(r.params),
                    }
                )
        return pd.DataFrame(rows).sort_values(["layer", "aic"], ignore_index=True)


@dataclass(frozen=True)
class _Candidate:
    """A kind: parameter names and bounds, a first guess, and the schedule it builds."""

    names: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    guesses: Callable[[np.ndarray], list[list[float]]]  # values → starting points
    build: Callable[[dict[str, float], int, int], Schedule]  # params, total_steps, hold
    needs_position: bool = False
    log_params: tuple[str, ...] = ()  # fitted as log10 (better conditioned)


def _ends(y: np.ndarray) -> tuple[float, float]:
    """Mean of the first and of the last tenth of the points, clipped to the alpha bounds."""
    tenth = max(1, len(y) // 10)
    return (
        float(np.clip(y[:tenth].mean(), *_ALPHA_BOUNDS)),
        float(np.clip(y[-tenth:].mean(), *_ALPHA_BOUNDS)),
    )


def _trend_guesses(y: np.ndarray) -> list[list[float]]:
    head, tail = _ends(y)
    return [
        [head, tail],
        [float(np.clip(y.max(), *_ALPHA_BOUNDS)), float(np.clip(y.min(), *_ALPHA_BOUNDS))],
    ]


def _geometric_guesses(y: np.ndarray) -> list[list[float]]:
    head, _ = _ends(y)
    return [[head, -1.0], [head, -3.0], [head, -0.1]]


def _fitted_guesses(y: np.ndarray) -> list[list[float]]:
    head, tail = _ends(y)
    top = float(np.clip(y.max(), *_ALPHA_BOUNDS))
    return [[top, tail, 0.5, 1.0], [top, tail, 0.7, 0.3], [head, tail, 0.3, 2.0]]


_CANDIDATES: dict[str, _Candidate] = {
    "constant": _Candidate(
        ("value",),
        (0.0,),
        (2.0,),
        lambda y: [[float(np.clip(y.mean(), *_ALPHA_BOUNDS))]],
        lambda p, t, h: Constant(p["value"]),
    ),
    "linear": _Candidate(
        ("start", "end"),
        (0.0, 0.0),
        (2.0, 2.0),
        _trend_guesses,
        lambda p, t, h: Linear(p["start"], t, h, p["end"]),
    ),
    "quadratic": _Candidate(
        ("start", "end"),
        (0.0, 0.0),
        (2.0, 2.0),
        _trend_guesses,
        lambda p, t, h: Quadratic(p["start"], t, h, p["end"]),
    ),
    "geometric": _Candidate(
        ("start", "ratio"),
        (0.0, -6.0),
        (2.0, 0.0),
        _geometric_guesses,
        lambda p, t, h: Geometric(p["start"], t, h, p["ratio"]),
        log_params=("ratio",),
    ),
    "fitted": _Candidate(
        ("start", "end", "inner_end", "inner_power"),
        (0.0, 0.0, 0.0, 0.05),
        (2.0, 2.0, 1.0, 20.0),
        _fitted_guesses,
        lambda p, t, h: Fitted(p["start"], t, h, p["end"], p["inner_end"], p["inner_power"]),
        needs_position=True,
    ),
}


def _evaluate(schedule: Schedule, steps: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    if positions is not None and isinstance(schedule, Fitted):
        return schedule.at(steps, positions)
    return schedule(steps)


def _fit_one(
    kind: str,
    steps: np.ndarray,
    values: np.ndarray,
    positions: np.ndarray | None,
    total_steps: int,
    hold: int,
) -> tuple[Schedule, FitReport]:
    candidate = _CANDIDATES[kind]
    n, k = len(values), len(candidate.names)

    def params_of(x: np.ndarray) -> dict[str, float]:
        return {
            name: float(10.0**v) if name in candidate.log_params else float(v)
            for name, v in zip(candidate.names, x)
        }

    def residuals(x: np.ndarray) -> np.ndarray:
        schedule = candidate.build(params_of(x), total_steps, hold)
        return _evaluate(schedule, steps, positions) - values

    lower, upper = np.array(candidate.lower), np.array(candidate.upper)
    best = None
    for guess in candidate.guesses(values):
        x0 = np.clip(np.array(guess, dtype=np.float64), lower, upper)
        solution = least_squares(
            residuals,
            x0,
            bounds=(lower, upper),
            method="trf",
            xtol=1e-12,
            ftol=1e-12,
            gtol=1e-12,
            max_nfev=2000,
        )
        if best is None or solution.cost < best.cost:
            best = solution
    assert best is not None
    params = params_of(best.x)
    schedule = candidate.build(params, total_steps, hold)
    resid = _evaluate(schedule, steps, positions) - values
    rss = float(resid @ resid)
    tss = float(((values - values.mean()) ** 2).sum())
    floor = (_RELATIVE_NOISE_FLOOR * max(float(np.abs(values).max()), 1e-12)) ** 2
    r2 = 1.0 - rss / tss if tss > n * floor else (1.0 if rss <= n * floor else 0.0)
    aic = n * math.log(max(rss / n, floor)) + 2 * k
    return schedule, FitReport(kind, params, r2, aic, rss, n, resid)


def _fit_series(
    kind: str,
    steps: np.ndarray,
    values: np.ndarray,
    positions: np.ndarray | None,
    total_steps: int,
    hold: int,
    where: str,
) -> tuple[Schedule, FitReport, dict[str, FitReport]]:
    n = len(values)
    if kind == "auto":
        kinds = [
            name
            for name, c in _CANDIDATES.items()
            if n >= len(c.names) + 1 and (positions is not None or not c.needs_position)
        ]
        if not kinds:
            raise InvalidArgumentError(
                f"fit_schedule needs at least 2 points to fit any kind{where}, got n={n}"
            )
    else:
        candidate = _CANDIDATES[kind]
        if n < len(candidate.names) + 1:
            raise InvalidArgumentError(
                f"fit_schedule kind={kind!r} has {len(candidate.names)} parameters and needs at "
                f"least {len(candidate.names) + 1} points{where}, got n={n}; measure more "
                "checkpoints or choose a kind with fewer parameters (e.g. 'constant')"
            )
        if candidate.needs_position and positions is None:
            raise InvalidArgumentError(
                f"fit_schedule kind={kind!r} needs each point's position inside its snapshot "
                "interval: pass data with snapshot_step, or hold=<steps per interval>"
            )
        kinds = [kind]
    fits = {name: _fit_one(name, steps, values, positions, total_steps, hold) for name in kinds}
    chosen = min(fits, key=lambda name: fits[name][1].aic)
    return fits[chosen][0], fits[chosen][1], {name: fit[1] for name, fit in fits.items()}


def _series_from_frame(
    data: pd.DataFrame, metric: str
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """layer → (steps, values, snapshot_steps or None) for rows of ``metric``."""
    missing = [c for c in ("step", "layer", "metric", "value") if c not in data.columns]
    if missing:
        raise InvalidArgumentError(
            f"fit_schedule data is missing columns {missing}; pass a gradvar records table "
            "(ProbeResult.to_frame(), gradvar.records.read_records) or a (steps, values) pair"
        )
    rows = data[data["metric"] == metric]
    if rows.empty:
        raise InvalidArgumentError(
            f"fit_schedule found no rows with metric={metric!r}; the table has metrics "
            f"{sorted(data['metric'].dropna().unique().tolist())}"
        )
    rows = rows[rows["value"].notna() & rows["step"].notna()]
    series = {}
    for name, group in rows.groupby("layer", sort=True):
        snapshot = None
        if "snapshot_step" in group and group["snapshot_step"].notna().all():
            snapshot = group["snapshot_step"].to_numpy(dtype=np.float64)
        series[str(name)] = (
            group["step"].to_numpy(dtype=np.float64),
            group["value"].to_numpy(dtype=np.float64),
            snapshot,
        )
    return series


def _series_from_arrays(data: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if len(data) not in (2, 3):
        raise InvalidArgumentError(
            f"fit_schedule data must be a records DataFrame or (steps, values[, "
            f"snapshot_steps]), got a sequence of length {len(data)}"
        )
    arrays = [np.asarray(a, dtype=np.float64).ravel() for a in data]
    if len({len(a) for a in arrays}) != 1:
        raise InvalidArgumentError(
            f"fit_schedule steps, values (and snapshot_steps) must have equal lengths, got "
            f"{[len(a) for a in arrays]}"
        )
    keep = np.all([np.isfinite(a) for a in arrays], axis=0)
    arrays = [a[keep] for a in arrays]
    return arrays[0], arrays[1], arrays[2] if len(arrays) == 3 else None


def _infer_hold(snapshots: list[np.ndarray], steps: np.ndarray) -> int:
    """The most common gap between consecutive snapshot steps; one interval if only one."""
    gaps = np.concatenate([np.diff(np.unique(s)) for s in snapshots])
    gaps = gaps[gaps > 0]
    if gaps.size:
        values, counts = np.unique(gaps, return_counts=True)
        return int(values[np.argmax(counts)])
    start = min(float(s.min()) for s in snapshots)
    return int(steps.max() - start) + 1


def _check_argument(name: str, value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidArgumentError(
            f"fit_schedule requires a positive integer {name} (or None to infer it), "
            f"got {name}={value!r}"
        )
    return int(value)


def fit_schedule(
    data: pd.DataFrame | Sequence[Any],
    *,
    kind: str = "auto",
    layer: str = WHOLE_MODEL,
    per_layer: bool = False,
    hold: int | None = None,
    total_steps: int | None = None,
    metric: str = "alpha_star_mean",
) -> FitResult:
    """Fit an alpha schedule to measurements of ``metric`` (α*) over training steps.

    ``data``: a records table (rows of ``metric``; ``layer`` selects one layer, or
    ``per_layer=True`` fits every layer) or ``(steps, values[, snapshot_steps])``. A point's
    position inside its snapshot interval is ``step - snapshot_step`` when snapshot steps are
    known, else ``step % hold``. ``hold`` (steps per interval) defaults to the most common gap
    between snapshot steps, or 1 (continuous schedules, no ``fitted`` kind) without them.
    ``total_steps`` defaults to the end of the last measured interval,
    ``(max(step) // hold + 1)·hold``; pass the run's length to extrapolate.
    ``kind="auto"`` fits every kind the data allows and keeps the lowest AIC.

    With ``per_layer=True`` the result is a :class:`~gradvar.schedules.PerLayer` with one fitted
    schedule per layer other than ``__all__``; its ``default`` is the fit on ``layer`` if the
    table has it, else on all rows pooled.
    """
    if kind != "auto" and kind not in _CANDIDATES:
        raise InvalidArgumentError(
            f"fit_schedule got unknown kind={kind!r}; valid kinds: {['auto', *KINDS]}"
        )
    hold = _check_argument("hold", hold)
    total_steps = _check_argument("total_steps", total_steps)
    if isinstance(data, pd.DataFrame):
        series = _series_from_frame(data, metric)
    elif isinstance(data, (tuple, list)):
        series = {layer: _series_from_arrays(data)}
    else:
        raise InvalidArgumentError(
            f"fit_schedule data must be a records DataFrame or a (steps, values) pair, got "
            f"{type(data).__name__}"
        )
    if not per_layer:
        if layer not in series:
            raise InvalidArgumentError(
                f"fit_schedule found no {metric!r} rows for layer={layer!r}; layers in the "
                f"table: {sorted(series)} (or pass per_layer=True)"
            )
        series = {layer: series[layer]}

    all_steps = np.concatenate([s[0] for s in series.values()])
    snapshots = [s[2] for s in series.values() if s[2] is not None]
    if hold is None:
        hold = _infer_hold(snapshots, all_steps) if snapshots else 1
    if total_steps is None:
        total_steps = (int(all_steps.max()) // hold + 1) * hold if all_steps.size else hold
    have_positions = hold > 1 or bool(snapshots)

    def fit(name: str, steps: np.ndarray, values: np.ndarray, snapshot: np.ndarray | None):
        positions = None
        if snapshot is not None:
            positions = steps - snapshot
        elif have_positions:
            positions = steps % hold
        where = "" if name == layer and not per_layer else f" for layer {name!r}"
        return _fit_series(kind, steps, values, positions, total_steps, hold, where)

    if not per_layer:
        schedule, report, candidates = fit(layer, *series[layer])
        return FitResult(schedule, report, candidates, layer=layer)

    reports: dict[str, FitReport] = {}
    all_candidates: dict[str, dict[str, FitReport]] = {}
    schedules: dict[str, Schedule] = {}
    for name, (steps, values, snapshot) in series.items():
        schedules[name], reports[name], all_candidates[name] = fit(name, steps, values, snapshot)
    if layer in schedules:
        default = schedules.pop(layer)
    else:
        pooled = [np.concatenate(parts) for parts in zip(*(s[:2] for s in series.values()))]
        pooled_snapshot = (
            np.concatenate([s[2] for s in series.values()])  # type: ignore[misc]
            if len(snapshots) == len(series)
            else None
        )
        default, reports[layer], all_candidates[layer] = fit(layer, *pooled, pooled_snapshot)
    return FitResult(
        PerLayer(schedules, default), reports, all_candidates, layer=layer, per_layer=True
    )
