"""Tests for gradvar.report: tables, findings and figure links of the Markdown report."""

from __future__ import annotations

import math
import re
import urllib.parse
from pathlib import Path

import numpy as np
import pytest

# the synthetic records live beside the plot tests (pytest puts tests/ on sys.path)
from test_plots import (
    LAYERS,
    RUNS,
    SNAPSHOT_INTERVAL,
    STEPS,
    WHOLE_MODEL_WEIGHTS,
    N,
    alpha_star_of,
    make_records,
)

from gradvar import report
from gradvar.errors import InvalidArgumentError
from gradvar.records import WHOLE_MODEL


def expected_alpha_star(run_index: int, layer: str, step: int) -> float:
    per_layer = [alpha_star_of(run_index, d, step) for d in range(len(LAYERS))]
    if layer == WHOLE_MODEL:
        return float(np.dot(per_layer, WHOLE_MODEL_WEIGHTS))
    return per_layer[LAYERS.index(layer)]


def expected_row(run_index: int, layer: str, steps: list[int], off: list[int]) -> list[float]:
    """m2, rho_mean, alpha*_mean, alpha*_layer, Var(v)/Var(g) at alpha=1, recomputed from the
    generator's formulas: m2 averaged over ``steps``, the snapshot-relative ones over ``off``."""
    depth = (*LAYERS, WHOLE_MODEL).index(layer)
    m2 = np.mean([10.0 * math.exp(-s / 40.0) * (1 + depth) * (1 + run_index) for s in steps])
    alpha = np.array([expected_alpha_star(run_index, layer, s) for s in off])
    rho = 2 * alpha - 1
    return [m2, rho.mean(), alpha.mean(), (alpha - 0.02).mean(), (2 - 2 * rho).mean()]


def table_after(text: str, marker: str) -> dict[str, list[str]]:
    """The first Markdown table after ``marker``, as layer → cells (without the layer)."""
    lines = text[text.index(marker) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        table[cells[0].strip("`")] = cells[1:]
    return table


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("report")
    path = report.write_report(make_records(), out, title="Synthetic run")
    return path, path.read_text(encoding="utf-8")


def test_report_last_checkpoint_table_matches_records(written):
    _, text = written
    last = STEPS[-1]
    assert last % SNAPSHOT_INTERVAL, "the test needs a last checkpoint off a snapshot"
    for run_index, run in enumerate(RUNS):
        section = text[text.index(f"### Run `{run}` (unit sample)") :]
        assert (
            f"Last checkpoint away from a snapshot, `step-{last:06d}` (step {last}, "
            f"epoch {last / 50:.4g})"
        ) in section
        table = table_after(section, "Last checkpoint")
        assert list(table) == [*LAYERS, WHOLE_MODEL]
        for layer, cells in table.items():
            assert cells[0] == str(N)
            expected = expected_row(run_index, layer, [last], [last])
            assert cells[1:] == [f"{value:.4g}" for value in expected]


def test_report_mean_table_leaves_snapshots_out_of_relative_metrics(written):
    _, text = written
    off = [s for s in STEPS if s % SNAPSHOT_INTERVAL]
    for run_index, run in enumerate(RUNS):
        section = text[text.index(f"### Run `{run}` (unit sample)") :]
        marker = f"Mean over {len(STEPS)} checkpoints"
        assert f"over the {len(off)} off-snapshot ones" in section
        table = table_after(section, marker)
        for layer, cells in table.items():
            expected = expected_row(run_index, layer, list(STEPS), off)
            assert cells == [f"{value:.4g}" for value in expected]


def test_report_findings(written):
    _, text = written
    first = np.mean([alpha_star_of(0, 0, s) for s in STEPS if s % SNAPSHOT_INTERVAL])
    assert f"α* decreases with depth in run `run_a`: first layer `fc1` {first:.4g}" in text
    intervals = {}
    for s in STEPS:
        if s % SNAPSHOT_INTERVAL:
            intervals.setdefault(s // SNAPSHOT_INTERVAL * SNAPSHOT_INTERVAL, []).append(s)
    start = np.mean([expected_alpha_star(1, WHOLE_MODEL, s) for s in intervals[0]])
    end = np.mean([expected_alpha_star(1, WHOLE_MODEL, s) for s in intervals[200]])
    assert (
        f"In run `run_b` the mean α*(`__all__`) per snapshot interval fell from {start:.4g} "
        f"(interval from step 0) to {end:.4g} (interval from step 200) (rank correlation with "
        "step -1.00 over 3 intervals)."
    ) in text
    assert "rank correlation with depth -1.00 over 3 layers" in text
    assert "At α = 1 (standard SVRG) the correction adds variance" in text
    assert "unit sample, n = 512" in text


def _alpha_rows(values_by_layer: dict[str, list[float]], steps=(10, 20, 30, 40)):
    from gradvar.records import to_frame

    return to_frame(
        {"run": "r", "checkpoint": str(s), "step": s, "epoch": None, "snapshot_step": 0,
         "layer": layer, "metric": "alpha_star_mean", "value": values[i], "n": 64,
         "unit": "sample"}
        for layer, values in values_by_layer.items()
        for i, s in enumerate(steps)
    )  # fmt: skip


def test_report_claims_no_trend_from_two_layers_or_a_weak_correlation(tmp_path):
    two = _alpha_rows({"0.weight": [0.9] * 4, "2.weight": [0.95] * 4})
    text = report.write_report(two, tmp_path / "two", figures={}).read_text()
    assert "increases" not in text and "only 2 layers: too few to tell a trend" in text
    weak = _alpha_rows(
        {f"{i}.weight": [v] * 4 for i, v in enumerate([0.9, 0.7, 0.95, 0.6, 0.92])}
        | {WHOLE_MODEL: [0.80, 0.85, 0.79, 0.84]}
    )
    text = report.write_report(weak, tmp_path / "weak", figures={}).read_text()
    assert "shows no clear trend with depth" in text and "over 5 layers" in text
    assert "decreases" not in text and "shows no clear trend over training" in text
    # BatchNorm weights (by the recorded module kinds) and biases do not count for depth
    mixed = _alpha_rows({"c.weight": [0.9] * 4, "c.bias": [0.1] * 4, "n.weight": [0.2] * 4,
                         "d.weight": [0.8] * 4, "e.weight": [0.7] * 4})  # fmt: skip
    kinds = {"c.weight": ["Conv2d"], "n.weight": ["BatchNorm2d"], "d.weight": ["Linear"],
             "e.weight": ["Linear"]}  # fmt: skip
    text = report.write_report(mixed, tmp_path / "mixed", figures={}, layer_kinds=kinds).read_text()
    assert "α* decreases with depth in run `r`: first layer `c.weight` 0.9, last layer " in text
    assert "over 3 layers" in text


def test_report_of_snapshot_only_records_claims_nothing_off_snapshot(tmp_path):
    rows = make_records()
    rows["snapshot_step"] = rows["step"]
    text = report.write_report(rows, tmp_path, figures={}).read_text()
    assert "off-snapshot checkpoints of run" not in text and "α* decreases" not in text
    assert "taken at a snapshot: ρ = α* = 1 there by construction" in text


def test_report_embeds_existing_pngs(written):
    path, text = written
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 7
    for link in links:
        assert not Path(link).is_absolute() and link.endswith(".png")
        target = path.parent / urllib.parse.unquote(link)
        assert target.exists() and target.stat().st_size > 0
    pdfs = re.findall(r"\[PDF\]\(([^)]+)\)", text)
    assert len(pdfs) == 7 and all((path.parent / p).exists() for p in pdfs)


def test_report_with_given_figures_and_missing_metrics(tmp_path):
    records = make_records(metrics=("m2_total_variance",))
    records["n"] = 50_000  # counts print in full, not as 5e+04
    figure = tmp_path / "elsewhere" / "my figure.png"
    figure.parent.mkdir()
    figure.write_bytes(b"\x89PNG")
    out = tmp_path / "out"
    text = report.write_report(records, out, figures={"custom": [figure]}).read_text()
    assert "](../elsewhere/my%20figure.png)" in text
    assert not (out / "figures").exists()
    table = table_after(text, "Last checkpoint")
    assert list(table["fc1"]) == ["50000", f"{10.0 * math.exp(-STEPS[-1] / 40.0):.4g}"]
    assert "α* decreases" not in text


def test_report_rejects_empty_records(tmp_path):
    with pytest.raises(InvalidArgumentError, match="empty"):
        report.write_report(make_records().iloc[:0], tmp_path)


def test_markdown_table_escapes_and_aligns():
    lines = report._markdown_table(["layer", "value"], [["a|b", "1"], ["long name", "22.5"]])
    assert lines[0] == "| layer     | value |"
    assert lines[1] == "| :-------- | ----: |"
    assert lines[2] == "| a\\|b      |     1 |"
    assert len({len(line) for line in lines}) == 1
