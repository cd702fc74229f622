"""Tests for gradvar.plots on a small synthetic records table with known structure."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.figure import Figure

from gradvar import plots
from gradvar.errors import InvalidArgumentError
from gradvar.records import WHOLE_MODEL, to_frame

LAYERS = ("fc1", "fc2", "fc3")
RUNS = ("run_a", "run_b")
STEPS = tuple(range(0, 300, 25))  # 12 checkpoints, the last one off a snapshot
SNAPSHOT_INTERVAL = 100  # snapshots at 0, 100, 200
STEPS_PER_EPOCH = 50
VR_ALPHAS = (0.5, 1.0)
N = 512
WHOLE_MODEL_WEIGHTS = (0.6, 0.3, 0.1)  # each layer's share of the coordinates


def alpha_star_of(run_index: int, depth: int, step: int) -> float:
    """Sawtooth: 1 at each snapshot, decaying to a floor that falls with depth and with time."""
    snapshot = step // SNAPSHOT_INTERVAL * SNAPSHOT_INTERVAL
    floor = 0.9 - 0.15 * depth - 0.05 * (snapshot // SNAPSHOT_INTERVAL) - 0.05 * run_index
    return floor + (1.0 - floor) * math.exp(-(step - snapshot) / 20.0)


def make_records(metrics: tuple[str, ...] | None = None, unit: str = "sample") -> pd.DataFrame:
    """2 runs × 12 checkpoints × (3 layers + __all__), every summary metric, unit "sample"."""
    rows = []
    for run_index, run in enumerate(RUNS):
        for step in STEPS:
            common = {
                "run": run,
                "checkpoint": f"step-{step:06d}",
                "step": step,
                "epoch": step / STEPS_PER_EPOCH,
                "snapshot_step": step // SNAPSHOT_INTERVAL * SNAPSHOT_INTERVAL,
                "n": N,
                "unit": unit,
            }
            alphas = [alpha_star_of(run_index, d, step) for d in range(len(LAYERS))]
            alphas.append(float(np.dot(alphas, WHOLE_MODEL_WEIGHTS)))
            for depth, layer in enumerate((*LAYERS, WHOLE_MODEL)):
                a = alphas[depth]
                rho = 2.0 * a - 1.0
                m2 = 10.0 * math.exp(-step / 40.0) * (1 + depth) * (1 + run_index)
                values = {
                    "m1_cosine": 0.1 + 0.02 * depth + 0.05 * run_index + 0.0005 * step,
                    "m2_total_variance": m2,
                    "m3_top_eigenvalue": 0.3 * m2,
                    "rho_mean": rho,
                    "alpha_star_mean": a,
                    "alpha_star_layer": a - 0.02,
                }
                for metric, value in values.items():
                    rows.append({**common, "layer": layer, "metric": metric, "value": value})
                for alpha in VR_ALPHAS:  # Var(v)/Var(g) with equal Var(g), Var(h)
                    ratio = 1.0 - 2.0 * alpha * rho + alpha**2
                    rows.append(
                        {
                            **common,
                            "layer": layer,
                            "metric": "vr_variance_ratio",
                            "value": ratio,
                            "alpha": alpha,
                        }
                    )
    frame = to_frame(rows)
    if metrics is not None:
        frame = frame[frame["metric"].isin(metrics).to_numpy(dtype=bool)].reset_index(drop=True)
    return frame


@pytest.fixture(scope="module")
def records() -> pd.DataFrame:
    return make_records()


def data_lines(ax) -> list:
    """Lines that carry data, not guides (snapshot lines, the ratio-1 line)."""
    return [line for line in ax.lines if line.get_gid() != plots.REFERENCE_GID]


def main_axes(fig: Figure) -> list:
    """Figure axes that are not colour bars or secondary axes."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>" and ax.lines]


def test_alpha_star_over_steps_one_panel_per_run_one_line_per_layer(records):
    fig = plots.alpha_star_over_steps(records)
    axes = main_axes(fig)
    assert len(axes) == len(RUNS)
    off = [s for s in STEPS if s % SNAPSHOT_INTERVAL]
    for ax in axes:
        lines = data_lines(ax)
        assert [line.get_label() for line in lines] == [*LAYERS, WHOLE_MODEL]
        for line in lines:
            x, y = line.get_xdata(), line.get_ydata()
            # the checkpoints off their snapshot, one piece per snapshot interval
            assert x[np.isfinite(x)].tolist() == off
            assert np.flatnonzero(np.isnan(x)).tolist() == [3, 7]
            assert np.all((y[np.isfinite(y)] > 0.3) & (y[np.isfinite(y)] < 1.0))
        snapshot_lines = [line for line in ax.lines if line.get_label() == "_snapshot"]
        assert sorted(line.get_xdata()[0] for line in snapshot_lines) == [0, 100, 200]
        assert ax.child_axes, "secondary epoch axis expected"
        assert ax.get_ylabel() == "α* (mean over coordinates)"  # on every panel
        assert sorted(t.get_text() for t in ax.texts) == sorted([*LAYERS, WHOLE_MODEL])
    colors = {tuple(line.get_color()) for line in data_lines(axes[0])}
    assert len(colors) == len(LAYERS) + 1
    fc1 = data_lines(axes[0])[0]
    finite = np.isfinite(fc1.get_xdata())
    expected = [alpha_star_of(0, 0, s) for s in off]
    np.testing.assert_allclose(fc1.get_ydata()[finite], expected)


def test_alpha_star_over_steps_draws_weights_by_module_only():
    rows = [
        {"run": "r", "checkpoint": str(s), "step": s, "epoch": np.nan, "snapshot_step": s - 1,
         "layer": layer, "metric": "alpha_star_mean", "value": 0.9, "n": 8, "unit": "sample"}
        for s in (1, 2, 3)
        for layer in ("conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "__all__")
    ]  # fmt: skip
    fig = plots.alpha_star_over_steps(to_frame(rows))
    line = data_lines(main_axes(fig)[0])[0]
    labels = [line.get_label() for line in data_lines(main_axes(fig)[0])]
    assert labels == ["conv.weight", "fc.weight", WHOLE_MODEL]
    # pairing with the previous checkpoint: every checkpoint has its own snapshot, one line
    assert line.get_xdata().tolist() == [1, 2, 3]
    kinds = {"conv.weight": ["Conv2d"], "bn.weight": ["Linear"], "fc.weight": ["LayerNorm"]}
    fig = plots.alpha_star_over_steps(to_frame(rows), layer_kinds=kinds)
    labels = [line.get_label() for line in data_lines(main_axes(fig)[0])]
    assert labels == ["conv.weight", "bn.weight", WHOLE_MODEL]


def test_alpha_star_over_steps_filters_and_ax(records):
    fig = Figure()
    ax = fig.add_subplot()
    out = plots.alpha_star_over_steps(records, layers=["fc2"], runs="run_b", ax=ax)
    assert out is fig
    assert [line.get_label() for line in data_lines(ax)] == ["fc2"]
    with pytest.raises(InvalidArgumentError, match="runs="):
        plots.alpha_star_over_steps(records, ax=Figure().add_subplot())
    with pytest.raises(InvalidArgumentError, match="fc9"):
        plots.alpha_star_over_steps(records, layers=["fc9"])


def test_alpha_star_over_steps_many_layers_uses_colorbar():
    rows = [
        {
            "run": "r",
            "checkpoint": str(s),
            "step": s,
            "epoch": np.nan,
            "snapshot_step": 0,
            "layer": f"l{i}.weight",
            "metric": "alpha_star_mean",
            "value": 1 - 0.01 * i * s,
            "n": 8,
            "unit": "sample",
        }
        for s in (0, 1, 2)
        for i in range(25)
    ]
    fig = plots.alpha_star_over_steps(to_frame(rows))
    assert len(data_lines(main_axes(fig)[0])) == 25
    assert any(ax.get_label() == "<colorbar>" for ax in fig.axes)


def test_metrics_over_training_three_panels_log_where_wide(records):
    fig = plots.metrics_over_training(records)
    axes = main_axes(fig)
    assert [ax.get_title() for ax in axes] == [
        "metric 1: directional variance",
        "metric 2: total variance",
        "metric 3: top eigenvalue",
    ]
    for ax in axes:
        assert [line.get_label() for line in data_lines(ax)] == list(RUNS)
    assert [ax.get_yscale() for ax in axes] == ["linear", "log", "log"]
    m2_run_a = data_lines(axes[1])[0].get_ydata()
    np.testing.assert_allclose(m2_run_a, [4 * 10 * math.exp(-s / 40) for s in STEPS])


def test_metrics_over_training_draws_present_panels_only(records, caplog):
    subset = records[records["metric"].ne("m3_top_eigenvalue").to_numpy(dtype=bool)]
    with caplog.at_level(logging.INFO, logger="gradvar.plots"):
        fig = plots.metrics_over_training(subset, runs=["run_a"], layer="fc1")
    assert len(main_axes(fig)) == 2
    assert "m3_top_eigenvalue" in caplog.text
    with pytest.raises(InvalidArgumentError, match="m1_cosine"):
        plots.metrics_over_training(make_records(metrics=("rho_mean",)))


def test_rho_heatmap_shape_order_range_and_step_axis_to_scale(records):
    fig = plots.rho_heatmap(records, run="run_a")
    ax = fig.axes[0]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    array = mesh.get_array()
    assert array.shape == (len(LAYERS) + 1, len(STEPS))
    assert mesh.get_clim() == (-1.0, 1.0)
    assert [t.get_text() for t in ax.get_yticklabels()] == [*LAYERS, WHOLE_MODEL]
    # the step axis is numeric: cell centres are the steps themselves
    edges = mesh.get_coordinates()[0, :, 0]
    np.testing.assert_allclose((edges[1:] + edges[:-1]) / 2, STEPS)
    # row fc3 (depth 2), run_a: rho = 2 alpha* - 1, independently recomputed; snapshot
    # checkpoints (rho = 1 by construction) are blank
    at_snapshot = np.array([s % SNAPSHOT_INTERVAL == 0 for s in STEPS])
    row = np.ma.getdata(array[2]).astype(float)
    assert np.ma.getmaskarray(array[2]).tolist() == at_snapshot.tolist()
    expected = np.array([2 * alpha_star_of(0, 2, s) - 1 for s in STEPS])
    np.testing.assert_allclose(row[~at_snapshot], expected[~at_snapshot])
    markers = [line for line in ax.lines if line.get_label() == "_snapshot"]
    assert markers and markers[0].get_xdata().tolist() == [0, 100, 200]


def test_rho_heatmap_needs_one_run(records):
    with pytest.raises(InvalidArgumentError, match="run_a"):
        plots.rho_heatmap(records)


def test_alpha_star_vs_depth_means_over_off_snapshot_checkpoints(records):
    fig = plots.alpha_star_vs_depth(records)
    ax = fig.axes[0]
    lines = data_lines(ax)
    assert [line.get_label() for line in lines] == list(RUNS)
    off = [s for s in STEPS if s % SNAPSHOT_INTERVAL]
    for run_index, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_xdata(), [0, 1, 2])
        expected = [np.mean([alpha_star_of(run_index, d, s) for s in off]) for d in range(3)]
        np.testing.assert_allclose(line.get_ydata(), expected)
        assert np.all(np.diff(line.get_ydata()) < 0), "deeper => smaller"
    assert len(ax.collections) == len(RUNS)  # one spread band per run
    assert [t.get_text() for t in ax.get_xticklabels()] == list(LAYERS)


def test_depth_layers_drop_bias_and_whole_model():
    layers = ["0.weight", "0.bias", "2.weight", "2.bias", WHOLE_MODEL]
    assert plots.depth_layers(layers) == ["0.weight", "2.weight"]
    assert plots.depth_layers(layers, include_bias=True) == layers[:4]
    assert plots.depth_layers(["a.bias", WHOLE_MODEL]) == ["a.bias"]


def test_vr_variance_plot_lines_per_alpha_and_run(records):
    fig = plots.vr_variance_plot(records)
    ax = main_axes(fig)[0]
    assert len(data_lines(ax)) == len(VR_ALPHAS) * len(RUNS)
    reference = [line for line in ax.lines if line.get_label() == "_ratio 1"]
    assert len(reference) == 1 and list(reference[0].get_ydata()) == [1, 1]
    fig = plots.vr_variance_plot(records, runs="run_a", alphas=[1.0])
    (line,) = data_lines(main_axes(fig)[0])
    assert line.get_label() == "α = 1"
    x = line.get_xdata()
    assert not np.isin(x, [0, 100, 200]).any()  # snapshot checkpoints are not on the curve
    assert np.nanmin(line.get_ydata()) > 0.0
    assert np.nanmax(line.get_ydata()) > 1.0  # stale snapshot: SVRG adds variance
    with pytest.raises(InvalidArgumentError, match="0.7"):
        plots.vr_variance_plot(records, alphas=[0.7])


def test_missing_metric_error_names_it_and_those_present():
    only_alpha = make_records(metrics=("alpha_star_mean",))
    with pytest.raises(InvalidArgumentError, match="rho_mean") as info:
        plots.rho_heatmap(only_alpha, run="run_a")
    assert "alpha_star_mean" in str(info.value)
    with pytest.raises(InvalidArgumentError, match="vr_variance_ratio"):
        plots.vr_variance_plot(only_alpha)
    with pytest.raises(InvalidArgumentError, match="empty"):
        plots.alpha_star_over_steps(only_alpha.iloc[:0])


def test_mixed_units_need_a_unit(records):
    mixed = pd.concat([records, make_records(unit="128")], ignore_index=True)
    with pytest.raises(InvalidArgumentError, match="unit="):
        plots.metrics_over_training(mixed)
    fig = plots.metrics_over_training(mixed, unit=128)
    assert len(data_lines(main_axes(fig)[0])) == len(RUNS)


def test_save_figure_writes_every_format(records, tmp_path):
    fig = plots.rho_heatmap(records, run="run_b")
    paths = plots.save_figure(fig, tmp_path / "sub" / "rho.run_b")
    assert [p.name for p in paths] == ["rho.run_b.png", "rho.run_b.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    with pytest.raises(InvalidArgumentError, match="formats"):
        plots.save_figure(fig, tmp_path / "x", formats=("nope",))


def test_plot_all_writes_every_supported_figure(records, tmp_path):
    saved = plots.plot_all(records, tmp_path, formats=("png",))  # PNG + PDF: test_report
    assert set(saved) == {
        "alpha_star_over_steps",
        "alpha_star_layer_over_steps",
        "metrics_over_training",
        "alpha_star_vs_depth",
        "vr_variance_ratio",
        "rho_heatmap_run_a",
        "rho_heatmap_run_b",
    }
    for paths in saved.values():
        assert [p.suffix for p in paths] == [".png"]
        assert all(p.exists() and p.stat().st_size > 1000 for p in paths)


def test_plot_all_skips_figures_without_metrics(tmp_path, caplog):
    subset = make_records(metrics=("alpha_star_mean",))
    with caplog.at_level(logging.INFO, logger="gradvar.plots"):
        saved = plots.plot_all(subset, tmp_path, formats=("png",))
    assert set(saved) == {"alpha_star_over_steps", "alpha_star_vs_depth"}
    assert "skipping figure rho_heatmap_run_a" in caplog.text
    assert "rho_mean" in caplog.text
    assert all(Path(p).exists() for paths in saved.values() for p in paths)


def test_snapshot_only_records_draw_no_snapshot_relative_figure(tmp_path):
    rows = make_records()
    rows["snapshot_step"] = rows["step"]  # every checkpoint is its own snapshot
    for draw in (plots.alpha_star_over_steps, plots.vr_variance_plot, plots.alpha_star_vs_depth):
        with pytest.raises(InvalidArgumentError, match="at a snapshot"):
            draw(rows)
    with pytest.raises(InvalidArgumentError, match="at a snapshot"):
        plots.rho_heatmap(rows, run="run_a")
    assert set(plots.plot_all(rows, tmp_path, formats=("png",))) == {"metrics_over_training"}
