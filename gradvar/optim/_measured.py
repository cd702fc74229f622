"""The per-layer alpha AlphaSVRG measures itself from the (g, h) pairs it already computes.

For every layer L (a bucket of parameters sharing one :class:`~gradvar.schedules.Measured`)
and the pairs i of the current snapshot interval, with weights ``w_i = decay**(age)``::

    C_L = Σ_i w_i ⟨g_i, h_i − μ̃⟩     V_L = Σ_i w_i ‖h_i − μ̃‖²     n = Σ_i w_i
    α_L = clamp((n · C_L / V_L + shrinkage · prior) / (n + shrinkage), low, high)

(α_L = prior while n = 0 or V_L = 0). The step that uses α_L only contributes its own pair
after it, so α_t is a function of earlier pairs only. The per-step dot products (one BLAS
call each) are added to float64 running sums: nothing |θ|-sized is kept.
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


def pair_terms(g: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """``(⟨g, d⟩, ‖d‖²)`` with ``d = h − μ̃`` of one parameter, as float64 0-d tensors.

    One BLAS dot product each, in the parameter's dtype (float32 for 16-bit parameters);
    the running sums they are added to are float64.
    """
    d, g = d.reshape(-1), g.reshape(-1)
    if d.dtype in (torch.float16, torch.bfloat16):
        d, g = d.float(), g.float()
    return torch.dot(g, d).to(_F64), torch.dot(d, d).to(_F64)


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
        # The measured parameters in slot order, and the fixed (slots × members) 0/1 matrix
        # that sums their per-step terms per slot: one GEMM, deterministic on every device.
        self._members = [i for s in self.slots for i in s.indices]
        owner = [k for k, s in enumerate(self.slots) for _ in s.indices]
        assign = torch.zeros(len(self.slots), len(self._members), dtype=_F64)
        assign[owner, range(len(self._members))] = 1.0
        self._assign = assign.to(device)
        self._owner = owner
        self._decay = torch.tensor([s.config.decay for s in self.slots], dtype=_F64).to(device)
        self._sums = torch.zeros(len(self.slots), 3, dtype=_F64, device=device)  # n, C, V
        self._pending: tuple[Tensor, list[bool]] | None = None
        self._alphas: list[float] | None = None
        self._pairs = 0.0
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
            self._pairs = float(n[0]) if len(n) else 0.0
        return self._alphas

    # ------------------------------------------------------------------ streaming

    def observe(
        self,
        gs: Sequence[Tensor | None],
        hs: Sequence[Tensor | None],
        means: Sequence[Tensor],
    ) -> None:
        """This step's pair of every measured parameter (lists over all the optimizer's
        parameters, in order); a parameter lacking g or h adds nothing."""
        present = [i for i in self._members if gs[i] is not None and hs[i] is not None]
        if not present:
            return
        ds = torch._foreach_sub([hs[i] for i in present], [means[i] for i in present])
        terms = {i: pair_terms(gs[i], d) for i, d in zip(present, ds)}
        zero = torch.zeros((), dtype=_F64, device=self.device)
        values = torch.stack(
            [t.to(self.device) for i in self._members for t in terms.get(i, (zero, zero))]
        )
        touched = [False] * len(self.slots)
        for k, i in zip(self._owner, self._members):
            touched[k] = touched[k] or i in terms
        self._pending = (values.view(-1, 2), touched)

    def commit(self, step: int, snapshot_step: int | None) -> None:
        """After the update at ``step``: log the alphas it used, then add its pairs.

        A slot whose parameters got no gradient this step keeps its sums as they were.
        """
        position = None if snapshot_step is None else step - snapshot_step
        used = tuple(self.alphas(step, position))
        self._log.append((step, snapshot_step, self._pairs, used))
        pending, self._pending = self._pending, None
        if pending is None or snapshot_step is None:
            return
        values, touched = pending
        mask = torch.tensor(touched, dtype=_F64).to(self.device)
        added = torch.cat([mask[:, None], self._assign @ values], dim=1)
        factor = torch.where(mask > 0, self._decay, torch.ones_like(self._decay))
        self._sums = self._sums * factor[:, None] + added
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
