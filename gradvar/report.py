"""A short Markdown report of a records table: findings, figures and per-layer tables.

``write_report`` writes ``report.md`` into a directory: a line per run (checkpoints, steps,
unit, n), a few sentences generated from the numbers, the figures of
:func:`gradvar.plots.plot_all` as relative PNG links, and per run two per-layer tables (the
last checkpoint, and the mean over checkpoints). Numbers carry 4 significant digits.

Findings are stated only where the evidence supports them: a trend (with depth, or over
training) is claimed only over at least ``MIN_POINTS`` = 3 layers or checkpoints and a
Spearman rank correlation of magnitude at least ``STRONG_CORRELATION`` = 0.7, and the
sentence always gives the correlation and the count; otherwise it says there is no clear
trend (with both numbers), or nothing. Depth counts modules by their weights only
(:func:`gradvar.plots.depth_layers`). Snapshot-relative metrics (ρ, α*, Var(v)/Var(g)) come
from checkpoints away from their snapshot only: at a snapshot θ = θ̃, so ρ = α* = 1 and the
ratio at α = 1 is 0 for every layer, which says nothing about the run.
"""

from __future__ import annotations

import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from gradvar.errors import InvalidArgumentError
from gradvar.plots import (
    SNAPSHOT_RELATIVE_METRICS,
    depth_layers,
    layer_order,
    plot_all,
)
from gradvar.records import WHOLE_MODEL, off_snapshot, validate

__all__ = ["SUMMARY_METRICS", "MIN_POINTS", "STRONG_CORRELATION", "write_report"]

MIN_POINTS = 3  # fewer layers or checkpoints than this: no trend is claimed
STRONG_CORRELATION = 0.7  # |Spearman rank correlation| below this: "no clear trend"

SUMMARY_METRICS: tuple[str, ...] = (
    "m2_total_variance",
    "rho_mean",
    "alpha_star_mean",
    "alpha_star_layer",
    "vr_variance_ratio",  # at alpha = 1 (standard SVRG) only
)
_HEADERS = {
    "m2_total_variance": "m2 (total variance)",
    "rho_mean": "ρ (mean)",
    "alpha_star_mean": "α* (mean)",
    "alpha_star_layer": "α* (layer)",
    "vr_variance_ratio": "Var(v)/Var(g) at α=1",
}
_CAPTIONS = {  # figure-name prefix → caption
    "alpha_star_over_steps": "α* (mean over coordinates) over training, per layer",
    "alpha_star_layer_over_steps": "α* (per layer) over training",
    "metrics_over_training": "Metrics 1–3 of the whole model over training",
    "alpha_star_vs_depth": "α* against depth (mean ± s.d. over off-snapshot checkpoints)",
    "vr_variance_ratio": "Var(v)/Var(g) of the corrected gradient, per alpha",
    "rho_heatmap": "ρ (mean over coordinates) by layer and step",
}
_DASH = "–"


def write_report(
    records: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    title: str = "gradvar report",
    figures: Mapping[str, Sequence[str | os.PathLike[str]]] | None = None,
    layer_kinds: Mapping[str, Sequence[str]] | None = None,
) -> Path:
    """Write ``out_dir/report.md`` for ``records``; return its path.

    ``figures`` maps a figure name to its saved files (as :func:`gradvar.plots.plot_all`
    returns); when omitted, every supported figure is drawn into ``out_dir/figures``. Each
    figure is embedded through its PNG (linked relative to ``out_dir``), other formats are
    linked beside it. ``layer_kinds`` (layer -> module classes, from the records' sidecar)
    tells normalisation layers apart for the depth finding.
    """
    frame = validate(records)
    if frame.empty:
        raise InvalidArgumentError("records table is empty: there is nothing to report")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if figures is None:
        figures = plot_all(frame, out_dir / "figures", layer_kinds=layer_kinds)
    order = layer_order(frame)
    groups = []  # (run, unit, rows) in order of appearance
    for (run, unit), rows in frame.groupby(["run", "unit"], sort=False, dropna=False):
        groups.append((str(run), _DASH if pd.isna(unit) else str(unit), rows))
    lines = [f"# {title}", "", "## Runs", ""]
    lines += [_overview(run, unit, rows) for run, unit, rows in groups]
    lines += ["", "## Findings", ""]
    findings = [
        sentence
        for run, _, rows in groups
        for sentence in (
            _depth_finding(run, rows, order, layer_kinds),
            _trend_finding(run, rows),
            _vr_finding(run, rows),
        )
        if sentence
    ]
    lines += [f"- {sentence}" for sentence in findings] or ["No summary metric to report on."]
    lines += ["", "## Figures", ""]
    lines += _figure_lines(figures, out_dir) or ["No figure: the records support none.", ""]
    lines += ["## Per-layer summary", ""]
    for run, unit, rows in groups:
        lines += _tables(run, unit, rows, order)
    path = out_dir / "report.md"
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------- numbers


def _fmt(value: float) -> str:
    """4 significant digits; a dash for a missing or non-finite value."""
    return f"{value:.4g}" if value is not None and math.isfinite(value) else _DASH


def _count_span(counts: pd.Series) -> str:
    """``a`` if every count is ``a``, else ``lo–hi`` (in full, no rounding); a dash if none."""
    counts = counts.dropna()
    if counts.empty:
        return _DASH
    low, high = int(counts.min()), int(counts.max())
    return str(low) if low == high else f"{low}–{high}"


def _summary_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of the summary metrics, Var(v)/Var(g) only at alpha = 1."""
    wanted = rows["metric"].isin(SUMMARY_METRICS).fillna(False).to_numpy(dtype=bool)
    is_vr = rows["metric"].eq("vr_variance_ratio").fillna(False).to_numpy(dtype=bool)
    at_one = np.isclose(rows["alpha"].to_numpy(dtype=float), 1.0)
    return rows[wanted & (~is_vr | at_one)]


def _mean_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """Summary rows to average: snapshot-relative metrics off the snapshots only."""
    rows = _summary_rows(rows)
    relative = rows["metric"].isin(SNAPSHOT_RELATIVE_METRICS).fillna(False).to_numpy(dtype=bool)
    return pd.concat([rows[~relative], off_snapshot(rows[relative])])


def _by_layer(rows: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """layer × metric table of mean values, layers in model order, summary metric order."""
    table = rows.pivot_table(index="layer", columns="metric", values="value", aggfunc="mean")
    columns = [metric for metric in SUMMARY_METRICS if metric in table.columns]
    return table.reindex(index=[layer for layer in order if layer in table.index], columns=columns)


def _of(rows: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    return rows[rows[column].eq(value).fillna(False).to_numpy(dtype=bool)]


def _by_step(rows: pd.DataFrame) -> pd.Series:
    return rows.dropna(subset=["step", "value"]).groupby("step", sort=True)["value"].mean()


# ---------------------------------------------------------------------------------- text


def _unit_noun(unit: str) -> str:
    return "examples" if unit == "sample" else f"mini-batches of {unit}" if unit.isdigit() else unit


def _overview(run: str, unit: str, rows: pd.DataFrame) -> str:
    steps = rows["step"].dropna()
    epochs = rows["epoch"].dropna()
    epoch_text = f" (epochs {_fmt(epochs.min())}–{_fmt(epochs.max())})" if len(epochs) else ""
    step_text = f"steps {steps.min()}–{steps.max()}" if len(steps) else "no step"
    return (
        f"- run `{run}`: {rows['checkpoint'].nunique()} checkpoints, {step_text}{epoch_text}, "
        f"unit {unit}, n = {_count_span(rows['n'])}"
    )


def _rank_correlation(values: np.ndarray) -> float:
    """Spearman correlation of ``values`` with their position (0 if they are all equal)."""
    ranks = pd.Series(values).rank().to_numpy()
    if np.ptp(ranks) == 0:
        return 0.0
    return float(np.corrcoef(np.arange(len(ranks)), ranks)[0, 1])


def _strong(correlation: float, count: int) -> bool:
    """Enough points and a rank correlation strong enough to speak of a trend."""
    return count >= MIN_POINTS and abs(correlation) >= STRONG_CORRELATION


def _depth_finding(
    run: str,
    rows: pd.DataFrame,
    order: Sequence[str],
    kinds: Mapping[str, Sequence[str]] | None = None,
) -> str | None:
    """α* (mean over off-snapshot checkpoints) against depth, modules by their weights."""
    alpha = off_snapshot(_of(rows, "metric", "alpha_star_mean"))
    means = alpha.groupby("layer")["value"].mean()
    layers = depth_layers([layer for layer in order if layer in means.index], kinds=kinds)
    if len(layers) < 2:
        return None
    values = means.reindex(layers).to_numpy(dtype=float)
    ends = (
        f"first layer `{layers[0]}` {_fmt(values[0])}, last layer `{layers[-1]}` {_fmt(values[-1])}"
    )
    if len(layers) < MIN_POINTS:
        return (
            f"α* in run `{run}`: {ends} (only {len(layers)} layers: too few to tell a trend with "
            "depth; means over off-snapshot checkpoints)."
        )
    correlation = _rank_correlation(values)
    if _strong(correlation, len(layers)):
        trend = "decreases with depth" if correlation < 0 else "increases with depth"
    else:
        trend = "shows no clear trend with depth"
    return (
        f"α* {trend} in run `{run}`: {ends} (rank correlation with depth {correlation:+.2f} "
        f"over {len(layers)} layers; means over off-snapshot checkpoints)."
    )


def _trend_finding(run: str, rows: pd.DataFrame) -> str | None:
    """How α*(__all__) moved over training: per snapshot interval when there are several."""
    whole = _of(_of(rows, "metric", "alpha_star_mean"), "layer", WHOLE_MODEL)
    whole = off_snapshot(whole).dropna(subset=["step", "value"])
    if whole.empty:
        return None
    intervals = whole["snapshot_step"]
    per_checkpoint = intervals.nunique() == whole["step"].nunique()  # pairing: previous
    if intervals.notna().all() and intervals.nunique() >= 2 and not per_checkpoint:
        means = whole.groupby("snapshot_step", sort=True)["value"].mean()
        subject = f"In run `{run}` the mean α*(`{WHOLE_MODEL}`) per snapshot interval"
        where = [f"(interval from step {step})" for step in (means.index[0], means.index[-1])]
        noun = "intervals"
    else:
        means = _by_step(whole)
        subject = f"In run `{run}` α*(`{WHOLE_MODEL}`)"
        where = [f"at step {step}" for step in (means.index[0], means.index[-1])]
        noun = "checkpoints"
    if len(means) < 2:
        return None
    start, end = float(means.iloc[0]), float(means.iloc[-1])
    span = f"from {_fmt(start)} {where[0]} to {_fmt(end)} {where[1]}"
    if len(means) < MIN_POINTS:
        return f"{subject} went {span} (only {len(means)} {noun}: too few to tell a trend)."
    correlation = _rank_correlation(means.to_numpy(dtype=float))
    stats = f"rank correlation with step {correlation:+.2f} over {len(means)} {noun}"
    if not _strong(correlation, len(means)):
        return f"{subject} shows no clear trend over training ({stats}; {span})."
    return f"{subject} {'fell' if correlation < 0 else 'rose'} {span} ({stats})."


def _vr_finding(run: str, rows: pd.DataFrame) -> str | None:
    """At alpha = 1 (SVRG), at how many off-snapshot checkpoints does v out-vary g?"""
    ratio = _of(_of(_summary_rows(rows), "metric", "vr_variance_ratio"), "layer", WHOLE_MODEL)
    per_step = _by_step(off_snapshot(ratio))
    if per_step.empty:
        return None
    above = per_step[per_step > 1.0]
    if above.empty:
        return (
            f"At α = 1 (standard SVRG) the correction never adds variance in run `{run}`: "
            f"Var(v)/Var(g) of `{WHOLE_MODEL}` is at most {_fmt(per_step.max())} over "
            f"{len(per_step)} off-snapshot checkpoints."
        )
    return (
        f"At α = 1 (standard SVRG) the correction adds variance (Var(v)/Var(g) of "
        f"`{WHOLE_MODEL}` > 1) at {len(above)} of {len(per_step)} off-snapshot checkpoints of "
        f"run `{run}`, first at step {above.index[0]} (up to {_fmt(above.max())})."
    )


def _markdown_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> list[str]:
    """Lines of a GitHub-flavoured Markdown table; first column left-, others right-aligned."""
    rows = [[cell.replace("|", "\\|") for cell in row] for row in [header, *body]]
    widths = [max(3, *(len(row[i]) for row in rows)) for i in range(len(header))]
    rule = [":" + "-" * (widths[0] - 1)] + ["-" * (w - 1) + ":" for w in widths[1:]]

    def line(cells: Sequence[str]) -> str:
        padded = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "| " + " | ".join(padded) + " |"

    return [line(rows[0]), line(rule), *(line(row) for row in rows[1:])]


def _tables(run: str, unit: str, rows: pd.DataFrame, order: Sequence[str]) -> list[str]:
    """The last-checkpoint and mean-over-checkpoints tables of one run."""
    summary = _summary_rows(rows)
    if summary.empty:
        return [f"### Run `{run}` (unit {unit})", "", "No summary metric recorded.", ""]
    # The last checkpoint away from a snapshot: at a snapshot ρ = α* = 1 by construction.
    away = off_snapshot(summary)
    pool = away if not away.empty else summary
    last_step = pool["step"].max()
    last = _of(pool, "step", last_step) if pd.notna(last_step) else pool
    checkpoint = ", ".join(f"`{c}`" for c in pd.unique(last["checkpoint"].dropna()))
    at_snapshot = off_snapshot(last).empty
    snapshot_note = ", taken at a snapshot: ρ = α* = 1 there by construction" if at_snapshot else ""
    epochs = last["epoch"].dropna()
    epoch_text = f", epoch {_fmt(epochs.iloc[0])}" if len(epochs) else ""
    values = _by_layer(last, order)
    n_by_layer = last.groupby("layer")["n"].agg(_count_span)
    header = ["layer", "n", *(_HEADERS[m] for m in values.columns)]
    body = [
        [f"`{layer}`", n_by_layer.get(layer, _DASH), *(_fmt(v) for v in values.loc[layer])]
        for layer in values.index
    ]
    mean_rows = _mean_rows(rows)
    means = _by_layer(mean_rows, order)
    relative = mean_rows["metric"].isin(SNAPSHOT_RELATIVE_METRICS).fillna(False)
    n_all = summary["checkpoint"].nunique()
    n_off = mean_rows[relative.to_numpy(dtype=bool)]["checkpoint"].nunique()
    mean_header = ["layer", *(_HEADERS[m] for m in means.columns)]
    mean_body = [[f"`{layer}`", *(_fmt(v) for v in means.loc[layer])] for layer in means.index]
    return [
        f"### Run `{run}` (unit {unit})",
        "",
        f"Last checkpoint away from a snapshot, {checkpoint} (step {last_step}{epoch_text}"
        f"{snapshot_note}); "
        f"n = number of {_unit_noun(unit)} behind each estimate:",
        "",
        *_markdown_table(header, body),
        "",
        f"Mean over {n_all} checkpoints (ρ, α* and Var(v)/Var(g) over the {n_off} "
        "off-snapshot ones):",
        "",
        *_markdown_table(mean_header, mean_body),
        "",
    ]


def _figure_lines(
    figures: Mapping[str, Sequence[str | os.PathLike[str]]], out_dir: Path
) -> list[str]:
    """A caption, an embedded PNG and links to the other formats, per figure."""

    def link(path: str | os.PathLike[str]) -> str:
        relative = os.path.relpath(Path(path).resolve(), out_dir.resolve())
        return urllib.parse.quote(Path(relative).as_posix())

    lines = []
    for name, paths in figures.items():
        paths = [Path(p) for p in paths]
        prefix = max((p for p in _CAPTIONS if name.startswith(p)), key=len, default=None)
        qualifier = name[len(prefix) :].strip("_") if prefix else ""
        caption = _CAPTIONS[prefix] if prefix else f"`{name}`"
        caption += f": `{qualifier}`" if qualifier else ""
        png = next((p for p in paths if p.suffix.lower() == ".png"), None)
        others = " · ".join(f"[{p.suffix[1:].upper()}]({link(p)})" for p in paths if p != png)
        lines += [f"### {caption}", ""]
        if png is not None:
            lines += [f"![{name}]({link(png)})", ""]
        if others:
            lines += [others, ""]
    return lines
