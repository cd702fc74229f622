"""Schedules: reference values, formulas checked the slow obvious way, type agreement,
torch.compile without recompilation, JSON round trips and validation errors."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch._dynamo.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from gradvar.errors import InvalidArgumentError
from gradvar.schedules import (
    Constant,
    Double,
    Fitted,
    Geometric,
    Linear,
    PerLayer,
    Piecewise,
    Quadratic,
    Schedule,
    as_schedule,
    from_dict,
    load,
    save,
)

T, H = 60, 7  # hold does not divide total_steps: K = ceil(60 / 7) = 9 intervals

EXAMPLES: dict[str, Schedule] = {
    "constant": Constant(0.6),
    "linear": Linear(0.8, T, H, end=0.1),
    "quadratic": Quadratic(0.9, T, H, end=0.05),
    "geometric": Geometric(0.75, T, H, ratio=0.03),
    "double": Double(Geometric(0.9, T, H), H, inner_end=0.4, inner_shape="geometric"),
    "fitted": Fitted(0.9, T, H, end=0.3, inner_end=0.5, inner_power=0.6),
    "piecewise": Piecewise([3, 10, 40], [1.0, 0.4, 0.7]),
    "per_layer": PerLayer({"fc1.weight": Linear(0.5, T)}, default=Quadratic(1.0, T, 3)),
}
STEPS = list(range(0, T + 15))  # past the end too


def test_linear_matches_reference_code_exactly() -> None:
    schedule = Linear(start=0.75, total_steps=20, hold=4)
    expected = [0.75] * 4 + [0.5625] * 4 + [0.375] * 4 + [0.1875] * 4 + [0.0] * 4
    assert [schedule(t) for t in range(20)] == expected
    assert schedule(25) == 0.0  # clamped to the last interval
    assert schedule(torch.arange(20)).tolist() == expected
    assert schedule(torch.arange(20, dtype=torch.float32)).tolist() == expected
    assert schedule(np.arange(20)).tolist() == expected


def test_linear_hold_one_is_continuous() -> None:
    assert [Linear(1.0, 5)(t) for t in range(7)] == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.0]
    assert Linear(0.5, total_steps=3, hold=10)(2) == 0.5  # one interval: start throughout


def _fraction(t: int, total_steps: int, hold: int) -> float:
    intervals = math.ceil(total_steps / hold)
    return 0.0 if intervals == 1 else min(t // hold, intervals - 1) / (intervals - 1)


@pytest.mark.parametrize("t", STEPS)
def test_formulas_against_direct_evaluation(t: int) -> None:
    f = _fraction(t, T, H)
    u = (t % H) / (H - 1)
    assert EXAMPLES["quadratic"](t) == pytest.approx(0.05 + 0.85 * (1 - f) ** 2)
    assert EXAMPLES["geometric"](t) == pytest.approx(0.75 * 0.03**f)
    assert EXAMPLES["double"](t) == pytest.approx(0.9 * 0.01**f * 0.4**u)
    trend = 0.9 * (1 - f) + 0.3 * f
    assert EXAMPLES["fitted"](t) == pytest.approx(trend * (1 - 0.5 * u**0.6))
    assert EXAMPLES["piecewise"](t) == pytest.approx(np.interp(t, [3, 10, 40], [1.0, 0.4, 0.7]))


def test_paper_forms() -> None:
    geometric = Geometric(0.75, total_steps=101)
    assert geometric(0) == 0.75
    assert geometric(50) == pytest.approx(0.75 * 0.1)
    assert geometric(100) == pytest.approx(0.75 * 0.01)
    assert Quadratic(1.0, total_steps=11)(5) == pytest.approx(0.25)
    double = Double(Linear(0.75, 20, 4), hold=4)  # linear inner decay to 0 by default
    assert [double(t) for t in range(4, 8)] == pytest.approx([0.5625, 0.375, 0.1875, 0.0])


def test_fitted_equals_its_double_form() -> None:
    fitted = EXAMPLES["fitted"]
    double = Double(Linear(0.9, T, H, 0.3), H, inner_end=0.5, inner_power=0.6)
    steps = np.arange(T + 10)
    np.testing.assert_allclose(fitted(steps), double(steps), rtol=1e-14)
    positions = (steps + 3) % H  # irregular snapshots: explicit position
    np.testing.assert_allclose(fitted.at(steps, positions), double.at(steps, positions))
    assert fitted.at(14, 0) == pytest.approx(fitted(14))


@pytest.mark.parametrize("kind", EXAMPLES)
def test_tensor_numpy_and_int_agree(kind: str) -> None:
    schedule = EXAMPLES[kind]
    expected = np.array([schedule(t) for t in STEPS])
    assert all(type(schedule(t)) is float for t in STEPS)
    for dtype, out_dtype in [
        (torch.int64, torch.float32),
        (torch.int32, torch.float32),
        (torch.float32, torch.float32),
        (torch.float64, torch.float64),
    ]:
        out = schedule(torch.tensor(STEPS, dtype=dtype))
        assert out.dtype == out_dtype and out.shape == (len(STEPS),)
        tol = 1e-12 if out_dtype == torch.float64 else 1e-6
        np.testing.assert_allclose(out.numpy(), expected, rtol=tol, atol=tol)
    scalar = schedule(torch.tensor(5))
    assert scalar.shape == () and scalar.item() == pytest.approx(schedule(5), rel=1e-6)
    array = schedule(np.array(STEPS))
    assert array.dtype == np.float64
    np.testing.assert_allclose(array, expected, rtol=1e-14)


@pytest.mark.parametrize("kind", EXAMPLES)
def test_compiles_once_for_many_step_tensors(kind: str) -> None:
    schedule = EXAMPLES[kind]
    counter = torch._dynamo.testing.CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda step: schedule(step), backend=counter, fullgraph=True, dynamic=False
    )
    for t in [0, 1, 6, 7, 30, 59, 70]:
        out = compiled(torch.tensor(t, dtype=torch.float32))
        assert out.item() == pytest.approx(schedule(t), rel=1e-6, abs=1e-7)
    assert counter.frame_count == 1


alphas = st.floats(-2, 2, allow_nan=False)
positive_ints = st.integers(1, 10**6)
basic = st.one_of(
    st.builds(Constant, alphas),
    st.builds(Linear, alphas, positive_ints, positive_ints, alphas),
    st.builds(Quadratic, alphas, positive_ints, positive_ints, alphas),
    st.builds(Geometric, alphas, positive_ints, positive_ints, st.floats(1e-6, 10)),
    st.builds(Piecewise, st.just([0.0, 5.5, 100.0]), st.lists(alphas, min_size=3, max_size=3)),
    st.builds(
        Fitted, alphas, positive_ints, positive_ints, alphas, st.floats(0, 1), st.floats(0.05, 20)
    ),
)
doubles = st.builds(
    Double,
    basic,
    positive_ints,
    st.floats(0.01, 1),
    st.sampled_from(["linear", "geometric"]),
    st.floats(0.05, 20),
)
every_kind = st.one_of(
    basic,
    doubles,
    st.builds(PerLayer, st.dictionaries(st.text(min_size=1), basic, max_size=3), basic),
)


@settings(max_examples=150, deadline=None)
@given(every_kind)
def test_to_dict_round_trip(schedule: Schedule) -> None:
    d = schedule.to_dict()
    assert d["kind"] == schedule.kind and d["version"] == 1
    rebuilt = from_dict(json.loads(json.dumps(d)))
    assert rebuilt == schedule and type(rebuilt) is type(schedule)
    assert rebuilt(12345) == schedule(12345)


def test_every_kind_is_covered_by_the_examples() -> None:
    kinds = {schedule.kind for schedule in EXAMPLES.values()}
    assert kinds == {"constant", "linear", "quadratic", "geometric", "double", "fitted",
                     "piecewise", "per_layer"}  # fmt: skip


@pytest.mark.parametrize("kind", EXAMPLES)
def test_save_and_load(kind: str, tmp_path) -> None:
    path = save(EXAMPLES[kind], tmp_path / "sub" / "alpha.json")
    assert load(path) == EXAMPLES[kind]


def test_per_layer() -> None:
    schedule = EXAMPLES["per_layer"]
    assert schedule.for_layer("fc1.weight") == Linear(0.5, T)
    assert schedule.for_layer("fc2.weight") == Quadratic(1.0, T, 3)
    assert schedule(9) == Quadratic(1.0, T, 3)(9)
    assert schedule.total_steps == T
    assert PerLayer({"a": 0.3}, 1.0).for_layer("a") == Constant(0.3)


def test_as_schedule() -> None:
    assert as_schedule(0.5) == Constant(0.5) and as_schedule(1) == Constant(1.0)
    linear = Linear(0.75, 10)
    assert as_schedule(linear) is linear
    assert as_schedule(linear.to_dict()) == linear
    with pytest.raises(InvalidArgumentError, match="load\\(path\\)"):
        as_schedule("linear.json")
    with pytest.raises(InvalidArgumentError):
        as_schedule(True)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Linear(0.75, 0), "Linear requires positive total_steps, got total_steps=0"),
        (lambda: Linear(0.75, 10, hold=-1), "Linear requires positive hold, got hold=-1"),
        (lambda: Quadratic(1.0, 2.5), "Quadratic requires an integer total_steps"),
        (lambda: Linear(float("nan"), 10), "Linear requires a finite start, got start=nan"),
        (lambda: Geometric(1.0, 10, ratio=0.0), "Geometric requires positive ratio, got ratio=0"),
        (lambda: Constant("1"), "Constant requires a real number value"),
        (lambda: Double(Linear(1, 10), 0), "Double requires positive hold, got hold=0"),
        (lambda: Double(1.0, 5, inner_shape="cosine"), "inner_shape='cosine'"),
        (lambda: Double(1.0, 5, inner_end=-0.5), "non-negative inner_end, got inner_end=-0.5"),
        (lambda: Double(1.0, 5, 0.0, "geometric"), "positive inner_end, got inner_end=0"),
        (lambda: Fitted(1.0, 10, 2, inner_power=0), "positive inner_power, got inner_power=0"),
        (lambda: Piecewise([0, 5, 5], [1, 2, 3]), "strictly increasing steps"),
        (lambda: Piecewise([0, 5], [1]), "as many steps as values"),
        (lambda: PerLayer({"a": "x"}, 1.0), "cannot use str 'x'"),
        (lambda: Linear(1.0, 10)(-1), "step must be a finite number >= 0, got step=-1"),
        (lambda: Linear(1.0, 10)("3"), "step must be an int"),
    ],
)
def test_validation_errors(build, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("(", "\\(")):
        build()


def test_from_dict_errors() -> None:
    with pytest.raises(InvalidArgumentError, match="kind='cosine'.*'linear'"):
        from_dict({"kind": "cosine", "version": 1})
    with pytest.raises(InvalidArgumentError, match="version=2"):
        from_dict({"kind": "linear", "version": 2, "start": 1.0, "total_steps": 5})
    with pytest.raises(InvalidArgumentError, match="no fields \\['stop'\\]"):
        from_dict({"kind": "linear", "version": 1, "start": 1.0, "total_steps": 5, "stop": 0})
    with pytest.raises(InvalidArgumentError, match="total_steps"):
        from_dict({"kind": "linear", "version": 1, "start": 1.0})
    assert from_dict({"kind": "constant", "value": 1}) == Constant(1.0)  # version optional


def test_schedules_imports_no_torch() -> None:
    code = "import sys, gradvar.schedules; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
