"""Figures from a records table: the alpha* sawtooth, variance metrics, rho heatmap, depth trend.

Every function takes a records table (:mod:`gradvar.records`), returns a
:class:`matplotlib.figure.Figure` and draws into ``ax`` when one is given. Figures are built
with :class:`~matplotlib.figure.Figure` directly, never through pyplot's global figure list,
so a batch job over many runs does not leak figures and a figure returned by a Jupyter cell is
shown once. Styling is seaborn's ``whitegrid`` theme, applied per figure (no global state).

Layers appear in *model order*: the order of their first appearance in the records table,
with the whole model (``__all__``) last. Snapshot-relative quantities (``rho_*``,
``alpha_star_*``, ``vr_*``) are trivial at a checkpoint taken right at a snapshot (θ = θ̃, so
ρ = α* = 1); averages over checkpoints leave those checkpoints out (:func:`off_snapshot`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gradvar.errors import InvalidArgumentError
from gradvar.records import WHOLE_MODEL, off_snapshot, validate


def _choose_backend() -> None:
    """Use Agg on a machine without a display, unless a backend was already chosen.

    A backend is already chosen when ``MPLBACKEND`` is set (Jupyter's kernel sets it to the
    inline backend) or pyplot is imported; seaborn imports pyplot, so this runs before it.
    """
    if os.environ.get("MPLBACKEND") or "matplotlib.pyplot" in sys.modules:
        return
    has_display = os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    if sys.platform.startswith("linux") and not has_display:
        matplotlib.use("Agg")


_choose_backend()

import seaborn as sns  # noqa: E402  (after the backend choice: seaborn imports pyplot)

__all__ = [
    "REFERENCE_GID",
    "VARIANCE_METRICS",
    "SNAPSHOT_RELATIVE_METRICS",
    "alpha_star_over_steps",
    "metrics_over_training",
    "rho_heatmap",
    "alpha_star_vs_depth",
    "vr_variance_plot",
    "save_figure",
    "plot_all",
    "layer_order",
    "depth_layers",
    "off_snapshot",
]

logger = logging.getLogger(__name__)

VARIANCE_METRICS: tuple[str, ...] = ("m1_cosine", "m2_total_variance", "m3_top_eigenvalue")
SNAPSHOT_RELATIVE_METRICS: tuple[str, ...] = (
    "rho_mean",
    "rho_layer",
    "alpha_star_mean",
    "alpha_star_layer",
    "vr_variance",
    "vr_variance_ratio",
)

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
_MAX_LEGEND_LAYERS = 15  # more layers: a depth colour bar instead of one legend entry each
_DEPTH_CMAP = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
_SNAPSHOT_STYLE = {"color": "0.3", "linestyle": ":", "linewidth": 1.2}
_RUN_LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))
_Filter = str | Sequence[str] | None
REFERENCE_GID = "gradvar-reference"  # gid of guide lines (snapshots, ratio 1), not data


# ---------------------------------------------------------------------------------- records


def layer_order(records: pd.DataFrame) -> list[str]:
    """Layers in model order (first appearance in ``records``), ``__all__`` last."""
    seen = [str(layer) for layer in pd.unique(records["layer"].dropna())]
    layers = [layer for layer in seen if layer != WHOLE_MODEL]
    return layers + [WHOLE_MODEL] if WHOLE_MODEL in seen else layers


def depth_layers(layers: Sequence[str], *, include_bias: bool = False) -> list[str]:
    """The layers that count for depth: ``__all__`` dropped, and ``*.bias`` unless asked.

    Layers default to one parameter tensor each, so a weight and its bias share a depth;
    biases hold few coordinates (noisy estimates) and would list every depth twice. They are
    kept if nothing else is left.
    """
    layers = [layer for layer in layers if layer != WHOLE_MODEL]
    weights = [layer for layer in layers if not layer.endswith(".bias")]
    return layers if include_bias or not weights else weights


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


# ---------------------------------------------------------------------------------- drawing


@contextlib.contextmanager
def _styled() -> Iterator[None]:
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        yield


def _root_figure(ax: Axes) -> Figure:
    figure = ax.get_figure()
    while figure is not None and not isinstance(figure, Figure):
        figure = figure.get_figure()
    if figure is None:
        raise InvalidArgumentError("ax is not attached to a figure")
    return figure


def _panels(
    count: int, ax: Axes | None, *, panel_size: tuple[float, float], sharey: bool
) -> tuple[Figure, list[Axes]]:
    """A figure with ``count`` panels (at most 3 a row), or ``ax``'s figure and ``[ax]``."""
    if ax is not None:
        return _root_figure(ax), [ax]
    ncols = min(count, 3)
    nrows = -(-count // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, sharey=sharey, squeeze=False).ravel())
    for extra in axes[count:]:
        extra.remove()
    return fig, axes[:count]


def _layer_colors(layers: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """Colour by depth (dark = first layer, light = last); the whole model in black."""
    depth = [layer for layer in layers if layer != WHOLE_MODEL]
    shades = _DEPTH_CMAP(np.linspace(0.0, 1.0, len(depth))) if len(depth) > 1 else [_DEPTH_CMAP(0)]
    colors = {layer: tuple(shade) for layer, shade in zip(depth, shades)}
    colors[WHOLE_MODEL] = (0.0, 0.0, 0.0, 1.0)
    return colors


def _snapshot_lines(ax: Axes, rows: pd.DataFrame) -> int:
    """Dotted vertical lines at the snapshot steps within the plotted steps; their count."""
    steps = rows["step"].to_numpy(dtype=float)
    snapshots = np.unique(rows["snapshot_step"].dropna().to_numpy(dtype=float))
    snapshots = snapshots[(snapshots >= steps.min()) & (snapshots <= steps.max())]
    for step in snapshots:
        # zorder 1: above the grid, below the data
        ax.axvline(step, label="_snapshot", gid=REFERENCE_GID, zorder=1, **_SNAPSHOT_STYLE)
    return len(snapshots)


def _add_epoch_axis(ax: Axes, rows: pd.DataFrame) -> None:
    """A secondary top axis in epochs, when epoch is an exact linear function of step."""
    pairs = rows[["step", "epoch"]].dropna().drop_duplicates()
    steps, epochs = pairs["step"].to_numpy(dtype=float), pairs["epoch"].to_numpy(dtype=float)
    if len(pairs) < 2 or np.ptp(steps) == 0:
        return
    slope, intercept = np.polyfit(steps, epochs, 1)
    residual = np.max(np.abs(slope * steps + intercept - epochs))
    if slope <= 0 or residual > 1e-3 * max(1.0, float(np.ptp(epochs))):
        return  # runs with different epoch lengths, or epochs rounded: no exact mapping

    def to_epoch(step: np.ndarray) -> np.ndarray:
        return slope * np.asarray(step, dtype=float) + intercept

    def to_step(epoch: np.ndarray) -> np.ndarray:
        return (np.asarray(epoch, dtype=float) - intercept) / slope

    ax.secondary_xaxis("top", functions=(to_epoch, to_step)).set_xlabel("epoch")


def _log_if_wide(ax: Axes, values: np.ndarray) -> None:
    """Log y scale when every value is positive and they span more than two decades."""
    if len(values) and np.all(values > 0) and values.max() / values.min() > 100:
        ax.set_yscale("log")


def _legend(fig: Figure, ax: Axes, own_figure: bool, handles: list, title: str) -> None:
    if own_figure:
        fig.legend(handles=handles, title=title, loc="outside right upper", frameon=False)
    else:
        ax.legend(handles=handles, title=title, fontsize="small")


# ---------------------------------------------------------------------------------- figures


def alpha_star_over_steps(
    records: pd.DataFrame,
    layers: _Filter = None,
    runs: _Filter = None,
    metric: str = "alpha_star_mean",
    *,
    unit: str | int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """α* against step, one line per layer and one panel per run: the paper's sawtooth.

    α* is 1 at every snapshot (θ = θ̃) and decays until the next one; dotted vertical lines
    mark the snapshot steps (the distinct ``snapshot_step`` values). Layers are coloured by
    depth, ``__all__`` in black. An epoch axis is added on top when epoch is linear in step.
    ``metric`` may be ``"alpha_star_layer"`` (or any per-step metric). With ``ax``, exactly
    one run must be selected.
    """
    frame = _checked(records)
    rows = _metric_rows(frame, metric, runs=runs, layers=layers, unit=unit)
    present = set(_ordered(rows["layer"]))
    order = [layer for layer in layer_order(frame) if layer in present]
    run_names = _ordered(rows["run"])
    if ax is not None and len(run_names) > 1:
        raise InvalidArgumentError(
            f"ax holds one panel but runs={run_names}: pass runs=one of them, or omit ax to "
            "get one panel per run"
        )
    colors = _layer_colors(order)
    with _styled():
        fig, axes = _panels(len(run_names), ax, panel_size=(5.2, 3.6), sharey=True)
        snapshots = 0
        for panel, run in zip(axes, run_names):
            run_rows = _rows_with(rows, "run", run)
            snapshots += _snapshot_lines(panel, run_rows)
            for layer in order:
                steps, values = _curve(_rows_with(run_rows, "layer", layer))
                whole = layer == WHOLE_MODEL
                panel.plot(
                    steps,
                    values,
                    label=layer,
                    color=colors[layer],
                    lw=2.2 if whole else 1.4,
                    marker="o" if len(steps) <= 40 else None,
                    markersize=2.5,
                    zorder=3 if whole else 2,
                )
            spec = panel.get_subplotspec()
            first_column = spec is None or spec.is_first_col()
            panel.set(xlabel="step", ylabel=_label(metric) if first_column else "")
            _add_epoch_axis(panel, run_rows)
        depth = [layer for layer in order if layer != WHOLE_MODEL]
        handles: list = []
        if len(depth) > _MAX_LEGEND_LAYERS:
            mappable = ScalarMappable(Normalize(0, len(depth) - 1), _DEPTH_CMAP)
            fig.colorbar(mappable, ax=axes, label="layer depth index (0 = first)")
        else:
            handles += [Line2D([], [], color=colors[layer], lw=1.4, label=layer) for layer in depth]
        if WHOLE_MODEL in order:
            handles.append(Line2D([], [], color=colors[WHOLE_MODEL], lw=2.2, label=WHOLE_MODEL))
        if snapshots:
            handles.append(Line2D([], [], label="snapshot", **_SNAPSHOT_STYLE))
        _legend(fig, axes[-1], ax is None, handles, "layer")
        if len(run_names) > 1:  # wide figure: the title spans the panels, each names its run
            fig.suptitle(f"{_label(metric)} over training ({_unit_of(rows)})")
            for panel, run in zip(axes, run_names):
                panel.set_title(run)
        else:  # over the axes only, clear of the legend beside them
            axes[0].set_title(
                f"{_label(metric)} over training\nrun {run_names[0]}, {_unit_of(rows)}"
            )
    return fig


def metrics_over_training(
    records: pd.DataFrame,
    runs: _Filter = None,
    layer: str = WHOLE_MODEL,
    *,
    unit: str | int | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Metrics 1–3 against step for one layer, one panel per metric, one line per run.

    Panels are drawn for the variance metrics present (a missing one is logged); a panel uses
    a log scale when its values are positive and span more than two decades. ``ax`` is a
    sequence with one axes per panel drawn.
    """
    frame = _checked(records)
    metric_names = set(_ordered(frame["metric"]))
    metrics = [metric for metric in VARIANCE_METRICS if metric in metric_names]
    if not metrics:
        raise InvalidArgumentError(
            f"records have none of the variance metrics {list(VARIANCE_METRICS)}; "
            f"metrics present: {sorted(metric_names)}"
        )
    for metric in VARIANCE_METRICS:
        if metric not in metric_names:
            logger.info("metrics_over_training: no %s rows, panel left out", metric)
    panels_rows = [_metric_rows(frame, m, runs=runs, layers=layer, unit=unit) for m in metrics]
    given = [ax] if isinstance(ax, Axes) else None if ax is None else list(ax)
    if given is not None and len(given) != len(metrics):
        raise InvalidArgumentError(
            f"ax must hold one axes per panel ({len(metrics)}: {metrics}), got {len(given)}"
        )
    all_runs = _ordered(pd.concat([rows["run"] for rows in panels_rows]))
    palette = dict(zip(all_runs, sns.color_palette("deep", len(all_runs))))
    with _styled():
        if given is None:
            fig, axes = _panels(len(metrics), None, panel_size=(4.6, 3.5), sharey=False)
        else:
            fig, axes = _root_figure(given[0]), given
        for panel, metric, rows in zip(axes, metrics, panels_rows):
            for run in _ordered(rows["run"]):
                steps, values = _curve(_rows_with(rows, "run", run))
                panel.plot(steps, values, label=run, color=palette[run], lw=1.6)
            _log_if_wide(panel, rows["value"].to_numpy(dtype=float))
            panel.set(title=_label(metric), xlabel="step")
            _add_epoch_axis(panel, rows)
        handles = [Line2D([], [], color=palette[run], lw=1.6, label=run) for run in all_runs]
        _legend(fig, axes[-1], given is None, handles, "run")
        if given is None:
            units = _unit_of(pd.concat(panels_rows))
            fig.suptitle(f"Gradient variance over training: layer {layer} ({units})")
    return fig


def rho_heatmap(
    records: pd.DataFrame,
    run: str | None = None,
    metric: str = "rho_mean",
    *,
    unit: str | int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of ``metric`` over layer (rows, model order, ``__all__`` last) × step (columns).

    Diverging colour map centred at 0 over [-1, 1] (wider if an α* metric exceeds it). ``run``
    may be omitted when the records hold one run.
    """
    frame = _checked(records)
    rows = _metric_rows(frame, metric, runs=run, unit=unit)
    run_names = _ordered(rows["run"])
    if len(run_names) > 1:
        raise InvalidArgumentError(f"rho_heatmap draws one run; records hold {run_names}: pass run")
    present = set(_ordered(rows["layer"]))
    order = [layer for layer in layer_order(frame) if layer in present]
    matrix = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="mean")
    matrix = matrix.reindex(order)
    matrix.columns = [int(step) for step in matrix.columns]
    values = matrix.to_numpy(dtype=float)
    limit = 1.0 if metric.startswith("rho") else max(1.0, float(np.nanmax(np.abs(values))))
    with _styled():
        fig, (panel,) = _panels(
            1,
            ax,
            sharey=False,
            panel_size=(
                float(np.clip(3 + 0.4 * matrix.shape[1], 6, 14)),
                float(np.clip(1.5 + 0.35 * len(order), 3, 14)),
            ),
        )
        with warnings.catch_warnings():  # seaborn 0.13 calls Colormap.set_bad (matplotlib 3.11)
            warnings.filterwarnings("ignore", "The set_bad", PendingDeprecationWarning)
            sns.heatmap(
                matrix,
                ax=panel,
                cmap="RdBu_r",
                center=0.0,
                vmin=-limit,
                vmax=limit,
                cbar_kws={"label": _label(metric)},
                xticklabels=True if matrix.shape[1] <= 30 else "auto",
                yticklabels=True if len(order) <= 60 else "auto",
            )
        if WHOLE_MODEL in order and len(order) > 1:
            panel.axhline(len(order) - 1, color="black", lw=1.5, gid=REFERENCE_GID)
        panel.set(xlabel="step", ylabel="layer")
        panel.set_title(f"{_label(metric)}: run {run_names[0]} ({_unit_of(rows)})")
        panel.tick_params(axis="y", rotation=0)
    return fig


def alpha_star_vs_depth(
    records: pd.DataFrame,
    runs: _Filter = None,
    metric: str = "alpha_star_mean",
    *,
    include_bias: bool = False,
    unit: str | int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """α* against layer depth, one line per run: the paper's "deeper ⇒ smaller".

    Each point is the mean over checkpoints of the layer's α*, the band ± one standard
    deviation (population) across those checkpoints. Checkpoints taken at a snapshot are left
    out (α* = 1 there for every layer). Depth index = position in model order among the
    layers :func:`depth_layers` keeps: ``__all__`` is dropped, and so are ``*.bias`` tensors
    unless ``include_bias`` (a bias shares its weight's depth).
    """
    frame = _checked(records)
    rows = off_snapshot(_metric_rows(frame, metric, runs=runs, unit=unit), or_all=True)
    present = set(_ordered(rows["layer"]))
    order = depth_layers(
        [layer for layer in layer_order(frame) if layer in present], include_bias=include_bias
    )
    if not order:
        raise InvalidArgumentError(
            f"rows of metric={metric!r} hold only the whole model ({WHOLE_MODEL!r}); a depth "
            "plot needs per-layer rows"
        )
    rows = rows[rows["layer"].isin(order).to_numpy(dtype=bool)]
    per_checkpoint = rows.groupby(["run", "layer", "step"])["value"].mean()
    summary = per_checkpoint.groupby(level=["run", "layer"]).agg(
        mean="mean", spread=lambda v: float(np.std(v))
    )
    run_names = _ordered(rows["run"])
    palette = sns.color_palette("deep", len(run_names))
    depth = np.arange(len(order), dtype=float)
    with _styled():
        fig, (panel,) = _panels(
            1, ax, panel_size=(max(5.5, 0.45 * len(order) + 3), 4.0), sharey=False
        )
        for run, color in zip(run_names, palette):
            stats = summary.loc[run].reindex(order)
            mean, spread = stats["mean"].to_numpy(float), stats["spread"].to_numpy(float)
            ok = np.isfinite(mean)
            panel.plot(depth[ok], mean[ok], marker="o", label=run, color=color, lw=1.6)
            panel.fill_between(
                depth[ok], (mean - spread)[ok], (mean + spread)[ok], color=color, alpha=0.2, lw=0
            )
        if len(order) <= 30:
            panel.set_xticks(
                depth,
                order,
                rotation=45 if len(order) > 4 else 0,
                ha="right" if len(order) > 4 else "center",
                rotation_mode="anchor",
            )
        panel.set(xlabel="layer (model order)", ylabel=_label(metric))
        panel.set_title(f"{_label(metric)} vs depth: mean ± s.d. over off-snapshot checkpoints")
        panel.legend(title="run", fontsize="small")
    return fig


def vr_variance_plot(
    records: pd.DataFrame,
    runs: _Filter = None,
    layer: str = WHOLE_MODEL,
    *,
    alphas: Sequence[float] | None = None,
    metric: str = "vr_variance_ratio",
    unit: str | int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Var(v)/Var(g) against step, one line per alpha (colour) and run (line style).

    v = g − α(h − μ̃) is the corrected gradient at the ``alpha`` column's value. A dashed line
    marks 1: above it the correction *adds* variance, as standard SVRG (α = 1) does once the
    snapshot is stale. Dotted vertical lines mark the snapshots.
    """
    frame = _checked(records)
    rows = _metric_rows(frame, metric, runs=runs, layers=layer, unit=unit)
    rows = rows[rows["alpha"].notna().to_numpy(dtype=bool)]
    if rows.empty:
        raise InvalidArgumentError(f"rows of metric={metric!r} have no alpha value")
    values = np.unique(rows["alpha"].to_numpy(dtype=float))
    if alphas is not None:
        missing = [a for a in alphas if not np.isclose(values, a).any()]
        if missing:
            raise InvalidArgumentError(
                f"no rows of metric={metric!r} at alphas={missing}; alphas present: "
                f"{values.tolist()}"
            )
        values = values[[np.isclose(alphas, v).any() for v in values]]
    run_names = _ordered(rows["run"])
    palette = sns.color_palette("flare", len(values))
    with _styled():
        fig, (panel,) = _panels(1, ax, panel_size=(7.5, 4.2), sharey=False)
        has_snapshots = _snapshot_lines(panel, rows)
        reference = {"color": "black", "linewidth": 1.0, "linestyle": (0, (4, 2))}
        panel.axhline(1.0, label="_ratio 1", gid=REFERENCE_GID, zorder=1, **reference)
        for alpha, color in zip(values, palette):
            at_alpha = rows[np.isclose(rows["alpha"].to_numpy(dtype=float), alpha)]
            for run, style in zip(run_names, _RUN_LINESTYLES * len(run_names)):
                steps, ratio = _curve(_rows_with(at_alpha, "run", run))
                name = f"α = {alpha:g}" + (f", {run}" if len(run_names) > 1 else "")
                panel.plot(steps, ratio, label=name, color=color, ls=style, lw=1.5)
        panel.set_ylim(bottom=0.0)
        panel.set(xlabel="step", ylabel=_label(metric))
        panel.set_title(f"Variance of the corrected gradient: layer {layer} ({_unit_of(rows)})")
        _add_epoch_axis(panel, rows)
        handles, _ = panel.get_legend_handles_labels()
        handles.append(Line2D([], [], label="1 (above: adds variance)", **reference))
        if has_snapshots:
            handles.append(Line2D([], [], label="snapshot", **_SNAPSHOT_STYLE))
        _legend(fig, panel, ax is None, handles, "α, run" if len(run_names) > 1 else "α")
    return fig


# ---------------------------------------------------------------------------------- output


def save_figure(
    fig: Figure,
    path_stem: str | os.PathLike[str],
    formats: Sequence[str] = ("png", "pdf"),
    *,
    dpi: int = 150,
) -> list[Path]:
    """Save ``fig`` as ``path_stem.<format>`` for each format; return the paths written."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    supported = fig.canvas.get_supported_filetypes()
    unknown = [fmt for fmt in formats if fmt.lstrip(".").lower() not in supported]
    if not formats or unknown:
        raise InvalidArgumentError(
            f"formats must be a non-empty sequence of {sorted(supported)}, got formats={formats}"
        )
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        fmt = fmt.lstrip(".").lower()
        path = stem.parent / f"{stem.name}.{fmt}"  # not with_suffix: stems may contain dots
        fig.savefig(path, format=fmt, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def _figure_plan(frame: pd.DataFrame) -> list[tuple[str, Callable[[], Figure]]]:
    plan: list[tuple[str, Callable[[], Figure]]] = [
        ("alpha_star_over_steps", functools.partial(alpha_star_over_steps, frame)),
        (
            "alpha_star_layer_over_steps",
            functools.partial(alpha_star_over_steps, frame, metric="alpha_star_layer"),
        ),
        ("metrics_over_training", functools.partial(metrics_over_training, frame)),
        ("alpha_star_vs_depth", functools.partial(alpha_star_vs_depth, frame)),
        ("vr_variance_ratio", functools.partial(vr_variance_plot, frame)),
    ]
    for run in _ordered(frame["run"]):
        plan.append((f"rho_heatmap_{_slug(run)}", functools.partial(rho_heatmap, frame, run)))
    return plan


def plot_all(
    records: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    formats: Sequence[str] = ("png", "pdf"),
) -> dict[str, list[Path]]:
    """Draw every figure the records support into ``out_dir``; return name → saved paths.

    A figure whose metrics (or layers) are absent is skipped with an INFO log line naming
    what is missing. Records in several units get one set of figures per unit, named with a
    ``_unit-<unit>`` suffix.
    """
    frame = _checked(records)
    out_dir = Path(out_dir)
    units = _ordered(frame["unit"])
    saved: dict[str, list[Path]] = {}
    for unit in units or [None]:
        unit_rows = frame if unit is None else _rows_with(frame, "unit", unit)
        suffix = "" if len(units) <= 1 else f"_unit-{_slug(str(unit))}"
        for name, build in _figure_plan(unit_rows):
            try:
                fig = build()
            except InvalidArgumentError as error:
                logger.info("skipping figure %s: %s", name + suffix, error)
                continue
            saved[name + suffix] = save_figure(fig, out_dir / (name + suffix), formats)
    if not saved:
        logger.warning("plot_all: the records support no figure; nothing written")
    return saved
