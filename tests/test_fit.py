"""fit_schedule: parameter recovery under noise, model choice by AIC, records tables,
per-layer fits, report arithmetic and errors. Synthetic data come from the schedules
themselves, so a wrong fit or a wrong schedule formula both fail here."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from gradvar.errors import InvalidArgumentError
from gradvar.fit import KINDS, FitReport, fit_schedule
from gradvar.records import to_frame
from gradvar.schedules import (
    Constant,
    Fitted,
    Geometric,
    Linear,
    PerLayer,
    Quadratic,
    Schedule,
    from_dict,
)

T, H = 1000, 50
STEPS = np.arange(0, T, 5)  # 200 points, 10 per snapshot interval

GENERATORS: dict[str, Schedule] = {
    "constant": Constant(0.8),
    "linear": Linear(0.9, T, H, end=0.2),
    "quadratic": Quadratic(0.85, T, H, end=0.1),
    "geometric": Geometric(0.9, T, H, ratio=0.05),
    "fitted": Fitted(0.9, T, H, end=0.5, inner_end=0.6, inner_power=0.5),
}
TRUE_PARAMS: dict[str, dict[str, float]] = {
    "constant": {"value": 0.8},
    "linear": {"start": 0.9, "end": 0.2},
    "quadratic": {"start": 0.85, "end": 0.1},
    "geometric": {"start": 0.9, "ratio": 0.05},
    "fitted": {"start": 0.9, "end": 0.5, "inner_end": 0.6, "inner_power": 0.5},
}


def _noisy(kind: str, sd: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return GENERATORS[kind](STEPS) + sd * rng.standard_normal(len(STEPS))


def test_generators_cover_every_kind() -> None:
    assert set(GENERATORS) == set(KINDS)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_recovers_parameters_under_noise(kind: str, seed: int) -> None:
    values = _noisy(kind, sd=0.02, seed=seed)
    result = fit_schedule((STEPS, values), kind=kind, hold=H, total_steps=T)
    assert result.report.kind == kind and type(result.schedule) is type(GENERATORS[kind])
    for name, true in TRUE_PARAMS[kind].items():
        fitted = result.report.params[name]
        if name == "ratio":
            assert math.log10(fitted) == pytest.approx(math.log10(true), abs=0.1)
        elif name == "inner_power":
            assert fitted == pytest.approx(true, rel=0.2)
        else:
            assert fitted == pytest.approx(true, abs=0.03), name
    assert getattr(result.schedule, "hold", H) == H
    assert 0.01 < np.std(result.report.residuals) < 0.03  # residuals are the noise


@pytest.mark.parametrize("kind", KINDS)
def test_auto_picks_the_generating_kind_on_clean_data(kind: str) -> None:
    result = fit_schedule((STEPS, GENERATORS[kind](STEPS)), hold=H, total_steps=T)
    assert result.report.kind == kind
    assert set(result.candidates) == set(KINDS)
    assert result.report.r2 == pytest.approx(1.0)
    np.testing.assert_allclose(result.schedule(STEPS), GENERATORS[kind](STEPS), atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "fitted"])
def test_auto_picks_the_generating_kind_under_noise(kind: str) -> None:
    result = fit_schedule((STEPS, _noisy(kind, sd=0.01)), hold=H, total_steps=T)
    assert result.report.kind == kind


def test_report_arithmetic() -> None:
    values = _noisy("quadratic", sd=0.05, seed=3)
    result = fit_schedule((STEPS, values), hold=H, total_steps=T)
    for report in result.candidates.values():
        n, k = len(values), len(report.params)
        rss = float(report.residuals @ report.residuals)
        assert report.n == n and report.rss == pytest.approx(rss)
        assert report.aic == pytest.approx(n * math.log(rss / n) + 2 * k)
        tss = float(((values - values.mean()) ** 2).sum())
        assert report.r2 == pytest.approx(1 - rss / tss)
    chosen = result.report
    np.testing.assert_allclose(chosen.residuals, result.schedule(STEPS) - values, atol=1e-12)
    assert chosen.aic == min(r.aic for r in result.candidates.values())
    assert json.loads(json.dumps(chosen.to_dict()))["kind"] == chosen.kind
    assert from_dict(result.schedule.to_dict()) == result.schedule

    table = result.table()
    assert list(table["kind"]) == sorted(result.candidates, key=lambda k: result.candidates[k].aic)
    assert table["chosen"].sum() == 1 and table.loc[table["chosen"], "kind"].item() == chosen.kind
    assert table["delta_aic"].min() == 0.0 and (table["delta_aic"] >= 0).all()


def test_parameters_stay_in_alpha_range() -> None:
    result = fit_schedule((STEPS, np.full(len(STEPS), 3.0)), kind="constant")
    assert result.report.params["value"] == pytest.approx(2.0)
    result = fit_schedule((STEPS, np.linspace(0.5, -1.0, len(STEPS))), kind="linear", hold=H)
    assert result.report.params["end"] == pytest.approx(0.0, abs=1e-9)
    assert min(result.schedule(STEPS)) >= 0.0


def test_uses_snapshot_steps_for_the_position_in_the_interval() -> None:
    # Snapshots every H steps but starting at step 20: step % H is not the position.
    steps = np.arange(20, T, 3)
    snapshots = 20 + (steps - 20) // H * H
    truth = GENERATORS["fitted"]
    values = truth.at(steps, steps - snapshots)
    result = fit_schedule((steps, values, snapshots), total_steps=T)
    assert result.schedule.hold == H  # inferred from the snapshot steps
    assert result.report.kind == "fitted"
    for name, true in TRUE_PARAMS["fitted"].items():
        assert result.report.params[name] == pytest.approx(true, abs=1e-4)
    ignoring_snapshots = fit_schedule((steps, values), kind="fitted", hold=H, total_steps=T)
    assert ignoring_snapshots.report.rss > 100 * max(result.report.rss, 1e-12)


def test_infers_hold_and_total_steps() -> None:
    steps = np.arange(0, 230, 2)
    values = Linear(0.8, 250, 50, 0.2)(steps)  # measured up to step 228: 5 intervals of 50
    result = fit_schedule((steps, values, steps // 50 * 50), kind="linear")
    assert result.schedule == Linear(result.report.params["start"], 250, 50,
                                     result.report.params["end"])  # fmt: skip
    assert result.report.params["start"] == pytest.approx(0.8)
    assert result.report.params["end"] == pytest.approx(0.2)
    # An irregular first interval (e.g. a resumed run) does not change the inferred hold.
    snapshots = np.where(steps < 30, 0, 30 + (steps - 30) // 50 * 50)
    assert fit_schedule((steps, values, snapshots), kind="fitted").schedule.hold == 50


def _records(layers: dict[str, Schedule], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for layer, schedule in layers.items():
        for step in STEPS:
            common = {"run": "r", "step": int(step), "snapshot_step": int(step // H * H),
                      "layer": layer, "n": 128, "unit": "sample"}  # fmt: skip
            value = schedule(int(step)) + 0.01 * rng.standard_normal()
            rows.append({**common, "metric": "alpha_star_mean", "value": value})
            rows.append({**common, "metric": "m2_total_variance", "value": 50 + 10 * value})
    return to_frame(rows)


LAYERS: dict[str, Schedule] = {
    "__all__": Fitted(0.85, T, H, end=0.5, inner_end=0.6, inner_power=0.5),
    "fc1.weight": Fitted(0.95, T, H, end=0.7, inner_end=0.8, inner_power=0.7),
    "fc2.weight": Linear(0.6, T, H, end=0.3),
}


def test_per_layer_fit_on_records() -> None:
    result = fit_schedule(_records(LAYERS), per_layer=True)
    assert isinstance(result.schedule, PerLayer)
    assert set(result.schedule.schedules) == {"fc1.weight", "fc2.weight"}
    assert set(result.report) == set(result.candidates) == set(LAYERS)
    for layer, truth in LAYERS.items():
        fitted = result.schedule.for_layer(layer) if layer != "__all__" else result.schedule.default
        assert type(fitted) is type(truth) and result.report[layer].kind == truth.kind
        np.testing.assert_allclose(fitted(STEPS), truth(STEPS), atol=0.02)
    table = result.table()
    assert len(table) == len(LAYERS) * len(KINDS)
    assert table.groupby("layer")["chosen"].sum().eq(1).all()
    assert from_dict(result.schedule.to_dict()) == result.schedule


def test_per_layer_default_pools_layers_without_whole_model_rows() -> None:
    layers = {k: v for k, v in LAYERS.items() if k != "__all__"}
    result = fit_schedule(_records(layers), per_layer=True, kind="linear")
    assert result.report["__all__"].n == 2 * len(STEPS)
    assert set(result.schedule.schedules) == set(layers)


def test_single_layer_from_records() -> None:
    records = _records(LAYERS)
    result = fit_schedule(records, layer="fc2.weight")
    assert result.report.kind == "linear"
    assert result.report.params["start"] == pytest.approx(0.6, abs=0.02)
    whole = fit_schedule(records, kind="fitted")
    assert whole.report.params["inner_end"] == pytest.approx(0.6, abs=0.03)
    other = fit_schedule(records, metric="m2_total_variance", kind="constant")
    assert other.report.params["value"] == pytest.approx(
        2.0
    )  # 50 + 10·alpha, clamped to the alpha range


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: fit_schedule((STEPS, STEPS * 0.0), kind="cosine"), "kind='cosine'.*'fitted'"),
        (lambda: fit_schedule(([0, 1], [1.0, 0.9]), kind="linear"), "needs at least 3 points"),
        (lambda: fit_schedule(([0], [1.0])), "at least 2 points"),
        (lambda: fit_schedule((STEPS, STEPS * 0.0), kind="fitted"), "snapshot_step, or hold="),
        (lambda: fit_schedule((STEPS, STEPS * 0.0), hold=0), "positive integer hold"),
        (lambda: fit_schedule((STEPS, STEPS[:-1] * 0.0)), "equal lengths"),
        (lambda: fit_schedule(np.zeros((2, 5))), "DataFrame"),
        (lambda: fit_schedule(_records(LAYERS), metric="rho_mean"), "alpha_star_mean"),
        (lambda: fit_schedule(_records(LAYERS), layer="fc3"), "'fc1.weight'"),
        (lambda: fit_schedule(pd.DataFrame({"step": [1]})), "missing columns"),
    ],
)
def test_errors(call, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        call()


def test_fit_report_is_frozen() -> None:
    report = fit_schedule((STEPS, _noisy("constant", 0.01)), kind="constant").report
    assert isinstance(report, FitReport)
    with pytest.raises(AttributeError):
        report.kind = "linear"  # type: ignore[misc]


def test_fit_imports_no_torch() -> None:
    code = "import sys, gradvar.fit; assert 'torch' not in sys.modules, 'fit imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
