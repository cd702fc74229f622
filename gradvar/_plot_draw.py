"""Drawing helpers shared by the figures: backend, style, panels, colours, snapshot marks.

Importing this module chooses matplotlib's backend (Agg on a machine without a display)
before seaborn imports pyplot.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from gradvar.errors import InvalidArgumentError
from gradvar.records import WHOLE_MODEL


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

MAX_LEGEND_LAYERS = 20  # more layers: a depth colour bar instead of one legend entry each
MAX_DIRECT_LABELS = 12  # up to this many lines are also labelled at their right end
DEPTH_CMAP = ListedColormap(matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, 256)))
SNAPSHOT_STYLE = {"color": "0.3", "linestyle": ":", "linewidth": 1.2}
REFERENCE_GID = "gradvar-reference"  # gid of guide lines (snapshots, ratio 1), not data


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
    """Well-separated qualitative colours (up to 20 layers), else by depth (dark = first);
    the whole model in black."""
    depth = [layer for layer in layers if layer != WHOLE_MODEL]
    if len(depth) <= 10:
        shades = list(matplotlib.colormaps["tab10"].colors)[: len(depth)]
    elif len(depth) <= MAX_LEGEND_LAYERS:
        tab20 = list(matplotlib.colormaps["tab20"].colors)
        shades = (tab20[0::2] + tab20[1::2])[: len(depth)]  # strong shades first
    else:
        shades = list(DEPTH_CMAP(np.linspace(0.0, 1.0, len(depth))))
    colors = {layer: tuple(shade) for layer, shade in zip(depth, shades)}
    colors[WHOLE_MODEL] = (0.0, 0.0, 0.0, 1.0)
    return colors


def _at_snapshot(rows: pd.DataFrame) -> np.ndarray:
    return (rows["step"] == rows["snapshot_step"]).fillna(False).to_numpy(dtype=bool)


def _snapshot_lines(ax: Axes, rows: pd.DataFrame) -> int:
    """Dotted vertical lines at the checkpoints taken at their snapshot; their count."""
    steps = np.unique(rows["step"][_at_snapshot(rows)].dropna().to_numpy(dtype=float))
    for step in steps:
        # zorder 1: above the grid, below the data
        ax.axvline(step, label="_snapshot", gid=REFERENCE_GID, zorder=1, **SNAPSHOT_STYLE)
    return len(steps)


def _off_snapshot_curve(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the checkpoints away from their snapshot, a NaN gap where the
    snapshot changes (each interval is its own piece of the sawtooth), unless every
    checkpoint has its own snapshot (pairing with the previous checkpoint)."""
    off = rows[~_at_snapshot(rows)]
    by_step = off.groupby("step", sort=True).agg(
        value=("value", "mean"), snap=("snapshot_step", "first")
    )
    steps = by_step.index.to_numpy(dtype=float)
    values = by_step["value"].to_numpy(dtype=float)
    snaps = by_step["snap"].to_numpy(dtype=float)
    if len(steps) < 2 or len(np.unique(snaps)) == len(snaps):
        return steps, values
    breaks = np.flatnonzero(np.diff(snaps) != 0) + 1
    return (
        np.insert(steps, breaks, np.nan),
        np.insert(values, breaks, np.nan),
    )


def _direct_labels(ax: Axes, curves: Sequence[tuple[str, np.ndarray, np.ndarray, tuple]]) -> None:
    """Each line's name at its last point, nudged apart so labels do not overlap."""
    ends = [(name, x[np.isfinite(y)][-1], y[np.isfinite(y)][-1], color)
            for name, x, y, color in curves if np.isfinite(y).any()]  # fmt: skip
    if not ends or len(ends) > MAX_DIRECT_LABELS:
        return
    low, high = ax.get_ylim()
    gap = 0.045 * (high - low)
    placed: list[float] = []
    for name, x, y, color in sorted(ends, key=lambda e: e[2]):
        y_text = y if not placed or y >= placed[-1] + gap else placed[-1] + gap
        placed.append(y_text)
        short = name[: -len(".weight")] if name.endswith(".weight") else name
        ax.annotate(
            short,
            xy=(x, y_text),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize="x-small",
            color=color,
            annotation_clip=False,
        )


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
