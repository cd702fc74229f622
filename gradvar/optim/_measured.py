"""The per-layer alpha AlphaSVRG measures itself from the (g, h) pairs it already computes.

For every layer L (a bucket of parameters sharing one :class:`~gradvar.schedules.Measured`)
and the pairs i of the current snapshot interval, with weights ``w_i = decay**(age)``::

    C_L = Σ_i w_i ⟨g_i, h_i − μ̃⟩     V_L = Σ_i w_i ‖h_i − μ̃‖²     n = Σ_i w_i
    α_L = clamp((n · C_L / V_L + shrinkage · prior) / (n + shrinkage), low, high)

(α_L = prior while n = 0 or V_L = 0). The step that uses α_L only contributes its own pair
after it, so α_t is a function of earlier pairs only. Per-step dot products are summed in
float64 and the running sums are float64 scalars: nothing |θ|-sized is kept.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradvar.errors import InvalidArgumentError
from gradvar.schedules import Measured

__all__ = ["MeasuredSlot", "MeasuredAlpha", "pair_terms"]

_F64 = torch.float64


@dataclass(frozen=True)
class MeasuredSlot:
    """One measured layer: its configuration, its name and its parameters (flat indices)."""

    config: Measured
    layer: str
    indices: tuple[int, ...]


def pair_terms(g: Tensor, h: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """``(⟨g, h − μ̃⟩, ‖h − μ̃‖²)`` of one parameter, summed in float64 (0-d tensors)."""
    d = h - mean
    return (g * d).sum(dtype=_F64), (d * d).sum(dtype=_F64)


class MeasuredAlpha:
    """Streaming sums (n, C_L, V_L) of every measured layer, the alphas they give, and a log.

    The optimizer calls :meth:`observe` with each step's pairs, :meth:`commit` after the base
    step (or :meth:`discard` when the step is dropped), and :meth:`reset` at every snapshot.
    """

    @classmethod
    def from_buckets(cls, buckets: Sequence[Any], device: torch.device) -> MeasuredAlpha | None:
        """One slot per measured bucket (an ``AlphaBucket``), or None if there is none."""
        slots = [MeasuredSlot(b.schedule, b.layer, b.indices) for b in buckets if b.measured]
        return cls(slots, device) if slots else None

    def __init__(self, slots: Sequence[MeasuredSlot], device: torch.device) -> None:
        self.slots = tuple(slots)
        self.device = device
        self._sums = torch.zeros(len(self.slots), 3, dtype=_F64, device=device)  # n, C, V
        self._pending: list[list[Tensor]] | None = None
        self._alphas: list[float] | None = None
        self._alpha_key: tuple[int, int | None] | None = None
        self._log: list[tuple[int, int | None, float, tuple[float, ...]]] = []

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(s.layer for s in self.slots)

    # ------------------------------------------------------------------ alpha

    def alphas(self, step: int, position: int | None) -> list[float]:
        """α_L of every slot for the update at ``step`` (``position`` steps after the snapshot).

        One device→host copy per step: the result is kept until the sums change.
        """
        key = (step, position)
        if self._alphas is None or self._alpha_key != key:
            n, c, v = self._sums.cpu().unbind(1)
            values = []
            for slot, n_i, c_i, v_i in zip(self.slots, n.tolist(), c.tolist(), v.tolist()):
                cfg = slot.config
                prior = float(cfg.at(step, position) if position is not None else cfg(step))
                if n_i > 0 and v_i > 0 and math.isfinite(c_i / v_i):
                    alpha = (n_i * (c_i / v_i) + cfg.shrinkage * prior) / (n_i + cfg.shrinkage)
                else:
                    alpha = prior
                low, high = cfg.clamp
                values.append(min(max(alpha, low), high))
            self._alphas, self._alpha_key = values, key
        return self._alphas

    def pairs(self) -> float:
        """n, the (decayed) number of pairs behind the current alphas (of the first slot)."""
        return float(self._sums[0, 0]) if self.slots else 0.0

    # ------------------------------------------------------------------ streaming

    def observe(
        self,
        slot: int,
        terms: Sequence[tuple[Tensor, Tensor]],
    ) -> None:
        """Add one step's pair terms (from :func:`pair_terms`) of slot ``slot``'s parameters."""
        if not terms:
            return
        if self._pending is None:
            self._pending = [[] for _ in self.slots]
        self._pending[slot].extend(t.to(self.device) for pair in terms for t in pair)

    def commit(self, step: int, snapshot_step: int | None) -> None:
        """After the update at ``step``: log the alphas it used, then add its pairs.

        A slot whose parameters got no gradient this step keeps its sums as they were.
        """
        position = None if snapshot_step is None else step - snapshot_step
        used = tuple(self.alphas(step, position))
        self._log.append((step, snapshot_step, self.pairs(), used))
        pending, self._pending = self._pending, None
        if pending is None or snapshot_step is None:
            return
        rows = [i for i, terms in enumerate(pending) if terms]
        if not rows:
            return
        new = torch.stack(
            [
                torch.stack([torch.ones((), dtype=_F64, device=self.device), *_sum_pairs(t)])
                for i, t in enumerate(pending)
                if i in rows
            ]
        )
        index = torch.tensor(rows, device=self.device)
        decay = torch.tensor([self.slots[i].config.decay for i in rows], dtype=_F64)
        updated = self._sums[index] * decay.to(self.device)[:, None] + new
        self._sums[index] = updated
        self._alphas = None

    def discard(self) -> None:
        """Drop the pairs of a step that was not taken (zero_grad, skipped GradScaler step)."""
        self._pending = None

    def reset(self) -> None:
        """A new snapshot interval starts: forget every pair."""
        self._sums.zero_()
        self._pending = None
        self._alphas = None

    # ------------------------------------------------------------------ log and state

    def log(self, *, clear: bool = False) -> list[dict[str, Any]]:
        """One row per (step, layer): ``step`` (the update's step count, the same step a
        schedule is evaluated at), ``snapshot_step``, ``layer``, ``alpha`` and ``pairs`` (n)."""
        rows = [
            {"step": step, "snapshot_step": snap, "layer": slot.layer, "alpha": a, "pairs": n}
            for step, snap, n, used in self._log
            for slot, a in zip(self.slots, used)
        ]
        if clear:
            self._log = []
        return rows

    def state_dict(self) -> dict[str, Any]:
        """The sums (the log is not training state and is not saved)."""
        return {"layers": list(self.layers), "sums": self._sums.detach().cpu().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        layers = list(state["layers"])
        if layers != list(self.layers):
            raise InvalidArgumentError(
                f"the saved measured-alpha state is for layers {layers[:5]} but this optimizer "
                f"measures {list(self.layers)[:5]}: build it with the same param groups and alpha"
            )
        self._sums = state["sums"].to(device=self.device, dtype=_F64, copy=True)
        self._pending = None
        self._alphas = None


def _sum_pairs(terms: list[Tensor]) -> list[Tensor]:
    """``[Σ C-terms, Σ V-terms]`` from the flat list ``[c0, v0, c1, v1, ...]``."""
    return [torch.stack(terms[0::2]).sum(), torch.stack(terms[1::2]).sum()]
