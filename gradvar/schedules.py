"""Schedules for alpha: frozen dataclasses, pure functions of the optimizer step.

Every schedule maps a step to alpha with plain arithmetic, so the same object works on a
Python ``int`` (returns a Python ``float``), a numpy array (returns float64) and a torch tensor
(returns a float32/float64 tensor on the step's device: the step's dtype if it is float32 or
float64, float32 otherwise). On tensors there is no Python branching on values, so a
``torch.compile``d step function sees one graph as the step changes. This module never imports
torch itself: ``gradvar.fit`` builds schedules and must stay torch-free.

The interval grid shared by ``Linear``, ``Quadratic``, ``Geometric`` and ``Fitted``: with
``hold`` steps per snapshot interval there are ``K = ceil(total_steps / hold)`` intervals; step
``t`` lies in interval ``j = min(t // hold, K - 1)``, at fraction ``f = j / (K - 1)`` of the way
through training (``f = 0`` when ``K = 1``). ``hold = 1`` is the continuous form; ``f`` reaches
1 in the last interval (at step ``total_steps - 1`` when ``hold = 1``), as in the reference code.
Steps before 0 count as step 0 (a negative Python step is an error).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from gradvar._files import atomic_path
from gradvar.errors import InvalidArgumentError

__all__ = [
    "VERSION",
    "Schedule",
    "Constant",
    "Linear",
    "Quadratic",
    "Geometric",
    "Double",
    "Fitted",
    "Piecewise",
    "PerLayer",
    "Measured",
    "MEASURED_LAYERS",
    "from_dict",
    "as_schedule",
    "save",
    "load",
]

VERSION = 1
_INNER_SHAPES = ("linear", "geometric")
MEASURED_LAYERS = ("parameter", "module", "model")


# ---------------------------------------------------------------- arithmetic on any step type


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    return torch is not None and isinstance(x, torch.Tensor)


def _prepare(step: Any) -> Any:
    """Check ``step``'s type; return it in a form the arithmetic below accepts."""
    if _is_tensor(step):
        if step.is_complex() or step.dtype == sys.modules["torch"].bool:
            raise InvalidArgumentError(f"step must be a real tensor, got dtype={step.dtype}")
        return step
    if isinstance(step, (np.ndarray, np.generic)):
        if np.asarray(step).dtype.kind not in "iuf":
            raise InvalidArgumentError(f"step must be numeric, got dtype={step.dtype}")
        return np.asarray(step)
    if isinstance(step, (int, float)) and not isinstance(step, bool):
        if not math.isfinite(step) or step < 0:
            raise InvalidArgumentError(f"step must be a finite number >= 0, got step={step!r}")
        return step
    raise InvalidArgumentError(
        f"step must be an int, a float, a numpy array or a torch tensor, got "
        f"{type(step).__name__} {step!r}"
    )


def _finish(value: Any, step: Any) -> Any:
    """Give ``value`` (computed from ``step``) the output type promised for ``step``'s type."""
    if _is_tensor(step):
        torch = sys.modules["torch"]
        dtype = step.dtype if step.dtype in (torch.float32, torch.float64) else torch.float32
        if _is_tensor(value):
            return value.to(dtype)
        return torch.full_like(step, value, dtype=dtype)
    if isinstance(step, (np.ndarray, np.generic)):
        out = np.broadcast_to(np.asarray(value, dtype=np.float64), np.shape(step)).copy()
        return out[()] if out.ndim == 0 else out
    return float(value)


def _clamp(x: Any, low: float, high: float) -> Any:
    if _is_tensor(x):
        return x.clamp(low, high)
    if isinstance(x, np.ndarray):
        return np.clip(x, low, high)
    return min(max(x, low), high)


def _interval_fraction(step: Any, total_steps: int, hold: int) -> Any:
    """``f = min(step // hold, K - 1) / (K - 1)`` with ``K = ceil(total_steps / hold)``."""
    intervals = -(-total_steps // hold)
    if intervals == 1:
        return step * 0
    return _clamp(step // hold, 0, intervals - 1) / (intervals - 1)


def _within_fraction(position: Any, hold: int) -> Any:
    """``u = clamp(position / (hold - 1), 0, 1)``: 0 at the snapshot, 1 at the interval's end."""
    if hold == 1:
        return position * 0
    return _clamp(position / (hold - 1), 0.0, 1.0)


# ---------------------------------------------------------------- argument checks


def _integer(owner: str, name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(
            f"{owner} requires an integer {name}, got {name}={value!r} ({type(value).__name__})"
        )
    if value < minimum:
        bound = "positive" if minimum == 1 else f">= {minimum}"
        raise InvalidArgumentError(f"{owner} requires {bound} {name}, got {name}={value!r}")
    return int(value)


def _real(owner: str, name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidArgumentError(
            f"{owner} requires a real number {name}, got {name}={value!r} ({type(value).__name__})"
        )
    if not math.isfinite(value):
        raise InvalidArgumentError(f"{owner} requires a finite {name}, got {name}={value!r}")
    if positive and value <= 0:
        raise InvalidArgumentError(f"{owner} requires positive {name}, got {name}={value!r}")
    return float(value)


def _set(obj: object, **values: Any) -> None:
    for name, value in values.items():
        object.__setattr__(obj, name, value)  # normalising fields of a frozen dataclass


# ---------------------------------------------------------------- base class and registry

_REGISTRY: dict[str, type[Schedule]] = {}


class Schedule:
    """Base class: ``schedule(step) -> alpha``; ``to_dict()`` / :func:`from_dict` round-trip.

    Subclasses are frozen dataclasses that set ``kind`` and implement ``_value`` with
    arithmetic valid on Python numbers, numpy arrays and torch tensors alike.
    """

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    def __call__(self, step: Any) -> Any:
        """Alpha at ``step`` (int → float, numpy → float64, tensor → float tensor)."""
        return _finish(self._value(_prepare(step)), step)

    def _value(self, step: Any) -> Any:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``{"kind": ..., "version": 1, <fields>}``; nested schedules nest."""
        out: dict[str, Any] = {"kind": self.kind, "version": VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            out[f.name] = _encode(getattr(self, f.name))
        return out

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> Schedule:
        return cls(**values)


def _encode(value: Any) -> Any:
    if isinstance(value, Schedule):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return list(value)
    return value


# ---------------------------------------------------------------- schedules


@dataclass(frozen=True)
class Constant(Schedule):
    """``alpha(t) = value``. ``Constant(1.0)`` is standard SVRG, ``Constant(0.0)`` the base
    optimizer."""

    kind: ClassVar[str] = "constant"
    value: float

    def __post_init__(self) -> None:
        _set(self, value=_real("Constant", "value", self.value))

    @property
    def total_steps(self) -> None:
        return None

    def _value(self, step: Any) -> Any:
        return self.value


@dataclass(frozen=True)
class Linear(Schedule):
    """``alpha(t) = start·(1 − f) + end·f`` on the interval grid (module docstring).

    Alpha is held for ``hold`` steps (one snapshot interval) and falls linearly across the
    ``K = ceil(total_steps / hold)`` intervals, reaching ``end`` in the last one. With
    ``end = 0`` this is the reference code's ``start·(1 − j/(K − 1))``:
    ``Linear(0.75, total_steps=20, hold=4)`` gives 0.75, 0.5625, 0.375, 0.1875, 0.0, each 4×.
    """

    kind: ClassVar[str] = "linear"
    start: float
    total_steps: int
    hold: int = 1
    end: float = 0.0

    def __post_init__(self) -> None:
        name = type(self).__name__
        _set(
            self,
            start=_real(name, "start", self.start),
            total_steps=_integer(name, "total_steps", self.total_steps),
            hold=_integer(name, "hold", self.hold),
            end=_real(name, "end", self.end),
        )

    def _value(self, step: Any) -> Any:
        f = _interval_fraction(step, self.total_steps, self.hold)
        return self.start * (1 - f) + self.end * f


@dataclass(frozen=True)
class Quadratic(Schedule):
    """``alpha(t) = end + (start − end)·(1 − f)²`` on the interval grid (module docstring).

    With ``end = 0`` and ``hold = 1``: the paper's ``start·(1 − t/T)²`` on ``f = t/(T − 1)``.
    """

    kind: ClassVar[str] = "quadratic"
    start: float
    total_steps: int
    hold: int = 1
    end: float = 0.0

    __post_init__ = Linear.__post_init__

    def _value(self, step: Any) -> Any:
        f = _interval_fraction(step, self.total_steps, self.hold)
        return self.end + (self.start - self.end) * (1 - f) ** 2


@dataclass(frozen=True)
class Geometric(Schedule):
    """``alpha(t) = start · ratio**f`` on the interval grid (module docstring).

    The paper's ``start·(10⁻²)^(t/T)`` is ``Geometric(start, T)``; alpha reaches
    ``start·ratio`` in the last interval.
    """

    kind: ClassVar[str] = "geometric"
    start: float
    total_steps: int
    hold: int = 1
    ratio: float = 1e-2

    def __post_init__(self) -> None:
        _set(
            self,
            start=_real("Geometric", "start", self.start),
            total_steps=_integer("Geometric", "total_steps", self.total_steps),
            hold=_integer("Geometric", "hold", self.hold),
            ratio=_real("Geometric", "ratio", self.ratio, positive=True),
        )

    def _value(self, step: Any) -> Any:
        return self.start * self.ratio ** _interval_fraction(step, self.total_steps, self.hold)


def _inner_factor(u: Any, inner_end: float, inner_power: float, shape: str) -> Any:
    """Within-interval factor at fraction ``u`` ∈ [0, 1]: 1 at ``u = 0``, ``inner_end`` at 1."""
    w = u**inner_power
    if shape == "linear":
        return 1 - (1 - inner_end) * w
    return inner_end**w


def _check_inner(owner: str, obj: Any, shape: str) -> None:
    if shape not in _INNER_SHAPES:
        raise InvalidArgumentError(
            f"{owner} requires inner_shape in {list(_INNER_SHAPES)}, got inner_shape={shape!r}"
        )
    inner_end = _real(owner, "inner_end", obj.inner_end, positive=shape == "geometric")
    if inner_end < 0:
        raise InvalidArgumentError(
            f"{owner} requires non-negative inner_end, got inner_end={inner_end!r}"
        )
    _set(
        obj,
        inner_end=inner_end,
        inner_power=_real(owner, "inner_power", obj.inner_power, positive=True),
    )


@dataclass(frozen=True)
class Double(Schedule):
    """Global decay × decay inside every snapshot interval (imitates the sawtooth of α*).

    ``alpha(t) = outer(t) · g(u)`` with position ``p = t % hold`` in the interval and
    ``u = p / (hold − 1)`` (0 at the snapshot, 1 at the interval's last step; ``u = 0`` when
    ``hold = 1``). The within-interval factor ``g`` goes from 1 down to ``inner_end``:

    - ``inner_shape="linear"``: ``g(u) = 1 − (1 − inner_end)·u**inner_power``
    - ``inner_shape="geometric"``: ``g(u) = inner_end**(u**inner_power)`` (``inner_end > 0``)

    ``inner_power = 1`` is the plain linear / geometric decay; below 1 the decay is fast right
    after the snapshot, as measured α* is. Give ``outer`` the same ``hold`` so it is constant
    inside each interval. :meth:`at` evaluates with an explicit position (irregular snapshots).
    """

    kind: ClassVar[str] = "double"
    outer: Schedule
    hold: int
    inner_end: float = 0.0
    inner_shape: str = "linear"
    inner_power: float = 1.0

    def __post_init__(self) -> None:
        _set(self, outer=as_schedule(self.outer), hold=_integer("Double", "hold", self.hold))
        _check_inner("Double", self, self.inner_shape)

    @property
    def total_steps(self) -> int | None:
        return getattr(self.outer, "total_steps", None)

    def at(self, step: Any, position: Any) -> Any:
        """Alpha at ``step`` when the last snapshot was taken ``position`` steps before."""
        return _finish(self._at(_prepare(step), _prepare(position)), step)

    def _at(self, step: Any, position: Any) -> Any:
        u = _within_fraction(position, self.hold)
        return self.outer._value(step) * _inner_factor(
            u, self.inner_end, self.inner_power, self.inner_shape
        )

    def _value(self, step: Any) -> Any:
        return self._at(step, step % self.hold)

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> Schedule:
        return cls(**{**values, "outer": from_dict(values.get("outer"))})


@dataclass(frozen=True)
class Fitted(Schedule):
    """The schedule :func:`gradvar.fit.fit_schedule` fits to measured α*: trend × sawtooth.

    ``alpha(t) = [start·(1 − f) + end·f] · [1 − (1 − inner_end)·u**inner_power]`` with ``f`` on
    the interval grid (module docstring) and ``u = (t % hold) / (hold − 1)`` as in
    :class:`Double`. It equals ``Double(Linear(start, total_steps, hold, end), hold,
    inner_end, "linear", inner_power)``, kept flat so its JSON lists the fitted parameters.
    """

    kind: ClassVar[str] = "fitted"
    start: float
    total_steps: int
    hold: int
    end: float = 0.0
    inner_end: float = 1.0
    inner_power: float = 1.0

    def __post_init__(self) -> None:
        Linear.__post_init__(self)  # type: ignore[arg-type]
        _check_inner("Fitted", self, "linear")

    def at(self, step: Any, position: Any) -> Any:
        """Alpha at ``step`` when the last snapshot was taken ``position`` steps before."""
        return _finish(self._at(_prepare(step), _prepare(position)), step)

    def _at(self, step: Any, position: Any) -> Any:
        f = _interval_fraction(step, self.total_steps, self.hold)
        u = _within_fraction(position, self.hold)
        trend = self.start * (1 - f) + self.end * f
        return trend * _inner_factor(u, self.inner_end, self.inner_power, "linear")

    def _value(self, step: Any) -> Any:
        return self._at(step, step % self.hold)


@dataclass(frozen=True)
class Piecewise(Schedule):
    """Linear interpolation through ``(steps[i], values[i])``; constant beyond both ends.

    ``alpha(t) = values[0] + Σ_i (values[i+1] − values[i])·clamp((t − steps[i]) /
    (steps[i+1] − steps[i]), 0, 1)``; ``steps`` strictly increasing.
    """

    kind: ClassVar[str] = "piecewise"
    steps: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        steps = tuple(_real("Piecewise", "steps[i]", s) for s in self.steps)
        values = tuple(_real("Piecewise", "values[i]", v) for v in self.values)
        if not steps or len(steps) != len(values):
            raise InvalidArgumentError(
                f"Piecewise requires as many steps as values and at least one point, got "
                f"{len(steps)} steps and {len(values)} values"
            )
        if any(b <= a for a, b in zip(steps, steps[1:])):
            raise InvalidArgumentError(
                f"Piecewise requires strictly increasing steps, got steps={list(steps)}"
            )
        _set(self, steps=steps, values=values)

    @property
    def total_steps(self) -> None:
        return None

    def _value(self, step: Any) -> Any:
        out = step * 0 + self.values[0]
        points = list(zip(self.steps, self.values))
        for (s0, v0), (s1, v1) in zip(points, points[1:]):
            out = out + (v1 - v0) * _clamp((step - s0) / (s1 - s0), 0.0, 1.0)
        return out


@dataclass(frozen=True)
class PerLayer(Schedule):
    """One schedule per layer (parameter or group name); ``default`` for every other layer.

    ``for_layer(name)`` returns the layer's schedule; calling a ``PerLayer`` directly gives the
    ``default``'s value (the whole-model alpha).
    """

    kind: ClassVar[str] = "per_layer"
    schedules: Mapping[str, Schedule]
    default: Schedule

    def __post_init__(self) -> None:
        if not isinstance(self.schedules, Mapping):
            raise InvalidArgumentError(
                f"PerLayer requires a mapping layer name -> schedule, got schedules of type "
                f"{type(self.schedules).__name__}"
            )
        for name in self.schedules:
            if not isinstance(name, str):
                raise InvalidArgumentError(
                    f"PerLayer requires str layer names, got {name!r} ({type(name).__name__})"
                )
        _set(
            self,
            schedules={name: as_schedule(s) for name, s in self.schedules.items()},
            default=as_schedule(self.default),
        )

    @property
    def total_steps(self) -> int | None:
        return getattr(self.default, "total_steps", None)

    def for_layer(self, name: str) -> Schedule:
        """The schedule of layer ``name``, or ``default`` if it has none of its own."""
        return self.schedules.get(name, self.default)

    def _value(self, step: Any) -> Any:
        return self.default._value(step)

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> Schedule:
        schedules = values.get("schedules")
        if not isinstance(schedules, Mapping):
            raise InvalidArgumentError(
                f"per_layer schedule dict needs 'schedules' as a dict, got {schedules!r}"
            )
        return cls(
            schedules={k: from_dict(v) for k, v in schedules.items()},
            default=from_dict(values.get("default")),
        )


@dataclass(frozen=True)
class Measured(Schedule):
    """Alpha that :class:`~gradvar.optim.AlphaSVRG` measures itself, per layer, as it trains.

    For layer L, over the mini-batch pairs (g_i at θ, h_i at θ̃) of the current snapshot
    interval that came *before* the step (weights ``w_i = decay**(age of pair i)``)::

        C_L = Σ_i w_i ⟨g_i, h_i − μ̃⟩        V_L = Σ_i w_i ‖h_i − μ̃‖²       n = Σ_i w_i
        α̂_L = C_L / V_L = Σ_k Cov_k(g, h) / Σ_k Var_k(h)     (μ̃ = E[h] is known exactly)
        α_L = clamp((n α̂_L + shrinkage · prior) / (n + shrinkage), *clamp)

    α̂_L is the per-layer optimal alpha α*_L (METHOD.md §4) with the snapshot's mean gradient
    as the known mean of h, so each pair adds two scalars per parameter and no |θ|-sized state.
    ``prior`` (a number or any schedule; evaluated at the step and, for in-interval schedules,
    its position) carries the first steps of each interval: α_L = prior while ``n = 0`` or
    ``V_L = 0``. Because α_t uses only earlier pairs, ``E[v_t | past] = ∇f(θ_t)`` still holds.

    Called as a plain schedule (``schedule(step)``: no measurements exist there) it gives the
    prior; the alpha actually used is recorded by the optimizer (``AlphaSVRG.alpha_log``).

    Args:
        prior: alpha before any pair is measured, and the shrinkage target.
        shrinkage: pseudo-count of the prior (pairs); 0 trusts α̂ from the first pair.
        clamp: ``(low, high)`` bounds of α_L.
        decay: weight of a pair per later step (1: the plain interval mean; 0.9: ~10 steps).
        layers: ``"parameter"`` (one alpha per parameter tensor), ``"module"`` (per module
            owning parameters: weight and bias share one) or ``"model"`` (one alpha).
    """

    kind: ClassVar[str] = "measured"
    prior: Schedule = dataclasses.field(default_factory=lambda: Constant(0.75))
    shrinkage: float = 8.0
    clamp: tuple[float, float] = (0.0, 1.0)
    decay: float = 1.0
    layers: str = "parameter"

    def __post_init__(self) -> None:
        shrinkage = _real("Measured", "shrinkage", self.shrinkage)
        if shrinkage < 0:
            raise InvalidArgumentError(
                f"Measured requires non-negative shrinkage, got shrinkage={shrinkage!r}"
            )
        bounds = tuple(self.clamp) if isinstance(self.clamp, (list, tuple)) else ()
        if len(bounds) != 2:
            raise InvalidArgumentError(
                f"Measured requires clamp=(low, high), got clamp={self.clamp!r}"
            )
        low, high = (_real("Measured", "clamp[i]", b) for b in bounds)
        if low > high:
            raise InvalidArgumentError(
                f"Measured requires clamp low <= high, got clamp={self.clamp!r}"
            )
        decay = _real("Measured", "decay", self.decay, positive=True)
        if decay > 1:
            raise InvalidArgumentError(f"Measured requires 0 < decay <= 1, got decay={decay!r}")
        if self.layers not in MEASURED_LAYERS:
            raise InvalidArgumentError(
                f"Measured requires layers in {list(MEASURED_LAYERS)}, got layers={self.layers!r}"
            )
        _set(
            self,
            prior=as_schedule(self.prior),
            shrinkage=shrinkage,
            clamp=(low, high),
            decay=decay,
        )

    @property
    def total_steps(self) -> int | None:
        return getattr(self.prior, "total_steps", None)

    def at(self, step: Any, position: Any) -> Any:
        """The prior at ``step``, ``position`` steps after the last snapshot."""
        at = getattr(self.prior, "at", None)
        return at(step, position) if at is not None else self.prior(step)

    def _value(self, step: Any) -> Any:
        return self.prior._value(step)

    @classmethod
    def _from_fields(cls, values: dict[str, Any]) -> Schedule:
        prior = values.get("prior")
        if isinstance(prior, Mapping):
            values = {**values, "prior": from_dict(prior)}
        return cls(**values)


# ---------------------------------------------------------------- conversion and files


def from_dict(d: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from :meth:`Schedule.to_dict` output (nested ones included).

    A missing ``"version"`` is read as the current version (hand-written JSON).
    """
    if not isinstance(d, Mapping):
        raise InvalidArgumentError(
            f"from_dict expects a dict from Schedule.to_dict(), got {type(d).__name__} {d!r}"
        )
    kind = d.get("kind")
    if kind not in _REGISTRY:
        raise InvalidArgumentError(
            f"unknown schedule kind={kind!r}; known kinds: {sorted(_REGISTRY)}"
        )
    version = d.get("version", VERSION)
    if version != VERSION:
        raise InvalidArgumentError(
            f"unsupported schedule version={version!r} for kind={kind!r}; this gradvar reads "
            f"version {VERSION} (upgrade gradvar to read newer files)"
        )
    cls = _REGISTRY[kind]
    values = {k: v for k, v in d.items() if k not in ("kind", "version")}
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InvalidArgumentError(
            f"schedule kind={kind!r} has no fields {unknown}; its fields are {names}"
        )
    try:
        return cls._from_fields(values)
    except TypeError as error:  # a required field is missing
        raise InvalidArgumentError(
            f"cannot build schedule kind={kind!r} from {dict(values)!r}: {error}; "
            f"its fields are {names}"
        ) from error


def as_schedule(x: Any) -> Schedule:
    """A number → :class:`Constant`; a :class:`Schedule` → itself; a dict → :func:`from_dict`;
    ``"measured"`` → :class:`Measured` with its defaults."""
    if isinstance(x, Schedule):
        return x
    if x == "measured":
        return Measured()
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return Constant(float(x))
    if isinstance(x, Mapping):
        return from_dict(x)
    raise InvalidArgumentError(
        f"cannot use {type(x).__name__} {x!r} as an alpha schedule; pass a number (constant "
        'alpha), a Schedule such as Linear(0.75, total_steps), "measured" (AlphaSVRG '
        "measures it), or a dict from to_dict() "
        "(for a JSON file use gradvar.schedules.load(path))"
    )


def save(schedule: Schedule, path: str | os.PathLike[str]) -> Path:
    """Write ``schedule.to_dict()`` as JSON to ``path`` atomically; return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(as_schedule(schedule).to_dict(), indent=2)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text + "\n")
    return path


def load(path: str | os.PathLike[str]) -> Schedule:
    """Read a schedule written by :func:`save`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no schedule file at {str(path)!r}")
    return from_dict(json.loads(path.read_text()))
