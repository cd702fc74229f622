"""ProbeResult: one probe run's values, the sums behind them, and views for reading them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import Tensor

from gradvar.errors import InvalidArgumentError
from gradvar.records import METRICS, WHOLE_MODEL, to_frame
from gradvar.stats import GradientSums

__all__ = ["ProbeResult"]


@dataclass
class ProbeResult:
    """One probe run: ``values[(layer, metric, alpha or None)]`` and the sums behind them."""

    values: dict[tuple[str, str, float | None], float]
    sums: GradientSums
    unit: str
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of samples (examples, or mini-batches for a mini-batch unit)."""
        return self.sums.n

    def value(self, metric: str, layer: str = WHOLE_MODEL, alpha: float | None = None) -> float:
        """One value, e.g. ``result.value("alpha_star_mean", layer="0.weight")``."""
        for (lay, met, a), v in self.values.items():
            if lay == layer and met == metric and (alpha is None or a == alpha):
                return v
        known = sorted({m for _, m, _ in self.values})
        raise KeyError(
            f"no value for metric={metric!r} layer={layer!r} alpha={alpha}; metrics: {known}"
        )

    def optimal_alpha(self, clamp: tuple[float, float] | None = (-2.0, 2.0)) -> dict[str, Tensor]:
        """Per-coordinate α*_k = Cov_k(g, h) / (Var_k(h) + 1e-24) for every parameter.

        The paper's estimator (clamped like the reference code), shaped like each parameter;
        usable as a per-coordinate alpha (``AlphaSVRG.set_coordinate_alpha``).
        """
        if not self.sums.paired:
            raise InvalidArgumentError("optimal_alpha needs a paired run (pass snapshot=)")
        n = self.sums.tensors["n"]
        out = {}
        for name, shape in self.sums.shapes.items():
            mean_g, mean_h = self.sums.get("g", name) / n, self.sums.get("h", name) / n
            var_h = (self.sums.get("h2", name) / n - mean_h**2).clamp_min(0)
            cov = self.sums.get("gh", name) / n - mean_g * mean_h
            alpha = cov / (var_h + 1e-24)
            out[name] = (alpha.clamp(*clamp) if clamp is not None else alpha).reshape(shape)
        return out

    def to_frame(self, **meta: Any) -> pd.DataFrame:
        """Records (README "Records"); ``meta`` overrides run/checkpoint/step/epoch/..."""
        info = {**self.meta, **meta}
        rows = [
            {
                "run": info.get("run"),
                "checkpoint": info.get("checkpoint"),
                "step": info.get("step"),
                "epoch": info.get("epoch"),
                "snapshot_step": info.get("snapshot_step"),
                "layer": layer,
                "metric": metric,
                "value": value,
                "n": self.n,
                "unit": self.unit,
                "alpha": math.nan if alpha is None else alpha,
            }
            for (layer, metric, alpha), value in self.values.items()
        ]
        return to_frame(rows)

    def table(self) -> pd.DataFrame:
        """Layer × metric table (``vr_*`` columns suffixed with ``@alpha``) for reading."""
        frame = self.to_frame()
        label = frame["metric"].where(
            frame["alpha"].isna(), frame["metric"] + "@" + frame["alpha"].astype(str)
        )
        order = list(dict.fromkeys(frame["layer"]))
        table = frame.assign(metric=label).pivot(index="layer", columns="metric", values="value")
        rank = {m: i for i, m in enumerate(METRICS)}
        columns = sorted(dict.fromkeys(label), key=lambda c: (rank.get(c.split("@")[0], 99), c))
        return table.loc[order, columns]

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()  # type: ignore[operator]
