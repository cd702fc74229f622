"""Figures from a records table: the alpha* sawtooth, variance metrics, rho heatmap, depth trend.

Every function takes a records table (:mod:`gradvar.records`), returns a
:class:`matplotlib.figure.Figure` and draws into ``ax`` when one is given. Figures are built
with :class:`~matplotlib.figure.Figure` directly, never through pyplot's global figure list,
so a batch job over many runs does not leak figures and a figure returned by a Jupyter cell is
shown once. Styling is seaborn's ``whitegrid`` theme, applied per figure (no global state).

Layers appear in *model order*: the order of their first appearance in the records table,
with the whole model (``__all__``) last. Depth means one point per module, weights only
(:func:`depth_layers`): biases and normalisation layers (BatchNorm, LayerNorm, GroupNorm)
are left out, told by the module classes ``analyze`` records in the sidecar
(``layer_kinds``) or, without them, by the layer names. Snapshot-relative quantities
(``rho_*``, ``alpha_star_*``, ``vr_*``) are trivial at a checkpoint taken right at a snapshot
(θ = θ̃, so ρ = α* = 1): such checkpoints are marked (dotted vertical lines, blank heatmap
columns) and never drawn as part of a curve or an average (:func:`off_snapshot`). Steps are
drawn to scale on every step axis, and every panel has its y label.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from gradvar._plot_draw import (  # first: it chooses the matplotlib backend
    DEPTH_CMAP,
    MAX_LEGEND_LAYERS,
    REFERENCE_GID,
    SNAPSHOT_STYLE,
    _add_epoch_axis,
    _at_snapshot,
    _direct_labels,
    _layer_colors,
    _legend,
    _log_if_wide,
    _off_snapshot_curve,
    _panels,
    _root_figure,
    _snapshot_lines,
    _styled,
    sns,
)
from gradvar._plot_rows import (
    _checked,
    _curve,
    _Filter,
    _label,
    _metric_rows,
    _ordered,
    _rows_with,
    _slug,
    _unit_of,
    depth_layers,
    layer_order,
)
from gradvar.errors import InvalidArgumentError
from gradvar.records import WHOLE_MODEL, off_snapshot

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
_RUN_LINESTYLES = ("-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)))


def _require_off_snapshot(rows: pd.DataFrame, metric: str) -> None:
    """A snapshot-relative figure needs a checkpoint away from its snapshot."""
    if metric in SNAPSHOT_RELATIVE_METRICS and off_snapshot(rows).empty:
        raise InvalidArgumentError(
            f"every row of metric={metric!r} is at a snapshot (θ = θ̃, so ρ = α* = 1 by "
            "construction): nothing to draw"
        )


# ---------------------------------------------------------------------------------- figures


def alpha_star_over_steps(
    records: pd.DataFrame,
    layers: _Filter = None,
    runs: _Filter = None,
    metric: str = "alpha_star_mean",
    *,
    unit: str | int | None = None,
    layer_kinds: Mapping[str, Sequence[str]] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """α* against step, one line per layer and one panel per run: the paper's sawtooth.

    α* is 1 at a snapshot (θ = θ̃) by construction and decays until the next one. Each line
    joins the checkpoints *away* from their snapshot, one piece per snapshot interval;
    checkpoints taken at a snapshot are marked by dotted vertical lines, not drawn as points.
    By default the layers are the model's weights, one per module (:func:`depth_layers`:
    no biases, no normalisation layers), plus ``__all__`` in black; ``layers=`` picks others.
    Up to 20 layers get well-separated colours (up to 12 also a label at their line's end),
    more a depth colour bar. An epoch axis is added on top when epoch is linear in step.
    ``metric`` may be ``"alpha_star_layer"`` (or any per-step metric). With ``ax``, exactly
    one run must be selected.
    """
    frame = _checked(records)
    rows = _metric_rows(frame, metric, runs=runs, layers=layers, unit=unit)
    _require_off_snapshot(rows, metric)
    present = set(_ordered(rows["layer"]))
    order = [layer for layer in layer_order(frame) if layer in present]
    if layers is None:
        kept = depth_layers(order, kinds=layer_kinds)
        order = [layer for layer in order if layer in kept or layer == WHOLE_MODEL]
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
            curves = []
            for layer in order:
                steps, values = _off_snapshot_curve(_rows_with(run_rows, "layer", layer))
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
                curves.append((layer, steps, values, colors[layer]))
            panel.set(xlabel="step", ylabel=_label(metric))
            _add_epoch_axis(panel, run_rows)
            _direct_labels(panel, curves)
        depth = [layer for layer in order if layer != WHOLE_MODEL]
        handles: list = []
        if len(depth) > MAX_LEGEND_LAYERS:
            mappable = ScalarMappable(Normalize(0, len(depth) - 1), DEPTH_CMAP)
            fig.colorbar(mappable, ax=axes, label="layer depth index (0 = first)")
        else:
            handles += [Line2D([], [], color=colors[layer], lw=1.4, label=layer) for layer in depth]
        if WHOLE_MODEL in order:
            handles.append(Line2D([], [], color=colors[WHOLE_MODEL], lw=2.2, label=WHOLE_MODEL))
        if snapshots:
            handles.append(Line2D([], [], label="checkpoint at a snapshot", **SNAPSHOT_STYLE))
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
            panel.set(title=_label(metric), xlabel="step", ylabel=_label(metric).split(": ")[-1])
            _add_epoch_axis(panel, rows)
        handles = [Line2D([], [], color=palette[run], lw=1.6, label=run) for run in all_runs]
        _legend(fig, axes[-1], given is None, handles, "run")
        if given is None:
            units = _unit_of(pd.concat(panels_rows))
            fig.suptitle(f"Gradient variance over training: layer {layer} ({units})")
    return fig


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges around the steps, halfway between neighbours (so the axis is to scale)."""
    if len(steps) == 1:
        return np.array([steps[0] - 0.5, steps[0] + 0.5])
    middle = (steps[1:] + steps[:-1]) / 2
    return np.concatenate([[steps[0] - (middle[0] - steps[0])], middle,
                           [steps[-1] + (steps[-1] - middle[-1])]])  # fmt: skip


def rho_heatmap(
    records: pd.DataFrame,
    run: str | None = None,
    metric: str = "rho_mean",
    *,
    unit: str | int | None = None,
    ax: Axes | None = None,
) -> Figure:
    """Heatmap of ``metric`` over layer (rows, model order, ``__all__`` last) × step.

    The step axis is to scale (each cell spans halfway to its neighbours). Checkpoints taken
    at their snapshot (ρ = 1 by construction) are left blank and marked with a triangle on
    top. Diverging colour map centred at 0 over [-1, 1] (wider if an α* metric exceeds it).
    ``run`` may be omitted when the records hold one run.
    """
    frame = _checked(records)
    rows = _metric_rows(frame, metric, runs=run, unit=unit)
    _require_off_snapshot(rows, metric)
    run_names = _ordered(rows["run"])
    if len(run_names) > 1:
        raise InvalidArgumentError(f"rho_heatmap draws one run; records hold {run_names}: pass run")
    present = set(_ordered(rows["layer"]))
    order = [layer for layer in layer_order(frame) if layer in present]
    snapshot_steps = np.unique(rows["step"][_at_snapshot(rows)].to_numpy(dtype=float))
    matrix = rows.pivot_table(index="layer", columns="step", values="value", aggfunc="mean")
    matrix = matrix.reindex(order)
    steps = matrix.columns.to_numpy(dtype=float)
    values = matrix.to_numpy(dtype=float, copy=True)
    values[:, np.isin(steps, snapshot_steps)] = np.nan
    finite = values[np.isfinite(values)]
    wide = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
    limit = 1.0 if metric.startswith("rho") else wide
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
        mesh = panel.pcolormesh(
            _edges(steps),
            np.arange(len(order) + 1),
            np.ma.masked_invalid(values),
            cmap="RdBu_r",
            vmin=-limit,
            vmax=limit,
        )
        fig.colorbar(mesh, ax=panel, label=_label(metric))
        panel.set_ylim(len(order), 0)  # first layer on top
        shown = np.arange(len(order)) if len(order) <= 60 else np.arange(0, len(order), 5)
        panel.set_yticks(shown + 0.5, [order[i] for i in shown])
        panel.grid(False)
        if len(snapshot_steps):
            panel.plot(snapshot_steps, np.full(len(snapshot_steps), -0.02), "v", color="0.3",
                       markersize=5, clip_on=False, transform=panel.get_xaxis_transform(),
                       gid=REFERENCE_GID, label="_snapshot")  # fmt: skip
        if WHOLE_MODEL in order and len(order) > 1:
            panel.axhline(len(order) - 1, color="black", lw=1.5, gid=REFERENCE_GID)
        panel.set(xlabel="step (▼ checkpoint at a snapshot, left blank)", ylabel="layer")
        panel.set_title(f"{_label(metric)}: run {run_names[0]} ({_unit_of(rows)})")
    return fig


def alpha_star_vs_depth(
    records: pd.DataFrame,
    runs: _Filter = None,
    metric: str = "alpha_star_mean",
    *,
    include_bias: bool = False,
    unit: str | int | None = None,
    layer_kinds: Mapping[str, Sequence[str]] | None = None,
    ax: Axes | None = None,
) -> Figure:
    """α* against layer depth, one line per run: the paper's "deeper ⇒ smaller".

    Each point is the mean over checkpoints of the layer's α*, the band ± one standard
    deviation (population) across those checkpoints. Checkpoints taken at a snapshot are left
    out (α* = 1 there for every layer). Depth index = position in model order among the
    layers :func:`depth_layers` keeps: one per module, weights only (``__all__``, ``*.bias``
    unless ``include_bias``, and normalisation layers by ``layer_kinds`` or by name are
    dropped). With no checkpoint away from a snapshot there is nothing to draw (an error).
    """
    frame = _checked(records)
    rows = off_snapshot(_metric_rows(frame, metric, runs=runs, unit=unit))
    if rows.empty:
        raise InvalidArgumentError(
            f"every row of metric={metric!r} is at a snapshot (α* = 1 there by construction): "
            "no depth profile to draw"
        )
    present = set(_ordered(rows["layer"]))
    order = depth_layers(
        [layer for layer in layer_order(frame) if layer in present],
        include_bias=include_bias,
        kinds=layer_kinds,
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
    snapshot is stale. Curves join the checkpoints away from their snapshot; dotted vertical
    lines mark the checkpoints taken at one (where v has no variance at α = 1, trivially).
    """
    frame = _checked(records)
    rows = _metric_rows(frame, metric, runs=runs, layers=layer, unit=unit)
    rows = rows[rows["alpha"].notna().to_numpy(dtype=bool)]
    if rows.empty:
        raise InvalidArgumentError(f"rows of metric={metric!r} have no alpha value")
    _require_off_snapshot(rows, metric)
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
                steps, ratio = _off_snapshot_curve(_rows_with(at_alpha, "run", run))
                name = f"α = {alpha:g}" + (f", {run}" if len(run_names) > 1 else "")
                panel.plot(steps, ratio, label=name, color=color, ls=style, lw=1.5)
        panel.set_ylim(bottom=0.0)
        panel.set(xlabel="step", ylabel=_label(metric))
        panel.set_title(f"Variance of the corrected gradient: layer {layer} ({_unit_of(rows)})")
        _add_epoch_axis(panel, rows)
        handles, _ = panel.get_legend_handles_labels()
        handles.append(Line2D([], [], label="1 (above: adds variance)", **reference))
        if has_snapshots:
            handles.append(Line2D([], [], label="checkpoint at a snapshot", **SNAPSHOT_STYLE))
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


def _figure_plan(
    frame: pd.DataFrame, kinds: Mapping[str, Sequence[str]] | None
) -> list[tuple[str, Callable[[], Figure]]]:
    over_steps = functools.partial(alpha_star_over_steps, frame, layer_kinds=kinds)
    plan: list[tuple[str, Callable[[], Figure]]] = [
        ("alpha_star_over_steps", over_steps),
        ("alpha_star_layer_over_steps", functools.partial(over_steps, metric="alpha_star_layer")),
        ("metrics_over_training", functools.partial(metrics_over_training, frame)),
        ("alpha_star_vs_depth", functools.partial(alpha_star_vs_depth, frame, layer_kinds=kinds)),
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
    layer_kinds: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, list[Path]]:
    """Draw every figure the records support into ``out_dir``; return name → saved paths.

    ``layer_kinds`` (layer -> module class names, from the records' sidecar) lets the depth
    figures tell normalisation layers apart from weights (:func:`depth_layers`).

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
        for name, build in _figure_plan(unit_rows, layer_kinds):
            try:
                fig = build()
            except InvalidArgumentError as error:
                logger.info("skipping figure %s: %s", name + suffix, error)
                continue
            saved[name + suffix] = save_figure(fig, out_dir / (name + suffix), formats)
    if not saved:
        logger.warning("plot_all: the records support no figure; nothing written")
    return saved
