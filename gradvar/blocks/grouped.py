"""Mini-batch gradients from per-example ones: the mean over consecutive groups of b samples."""

from __future__ import annotations

import torch
from torch import Tensor

from gradvar.blocks._base import GradBlock

__all__ = ["GroupedBlock"]


class GroupedBlock(GradBlock):
    """g_B = (1/b) Σ_{i∈B} g_i for consecutive groups B of ``size`` samples of ``parent``.

    A trailing incomplete group is dropped (like ``drop_last``). Slabs are the parent's slabs
    averaged over each group; linear reductions go straight to the parent's closed forms.
    """

    def __init__(self, parent: GradBlock, size: int) -> None:
        self.parent, self.size = parent, size
        self.shape = parent.shape
        self._units = parent.n // size

    @property
    def n(self) -> int:
        return self._units

    @property
    def device(self) -> torch.device:
        return self.parent.device

    def _per_example(self, weights: Tensor) -> Tensor:
        spread = weights.repeat_interleave(self.size, dim=-1) / self.size
        pad = self.parent.n - spread.shape[-1]
        return torch.nn.functional.pad(spread, (0, pad)) if pad else spread

    def slab(self, lo: int, hi: int) -> Tensor:
        rows = self.parent.slab(lo, hi)[: self._units * self.size]
        return rows.reshape(self._units, self.size, *rows.shape[1:]).mean(1)

    def weighted_sum(self, weights: Tensor) -> Tensor:
        w = weights.to(device=self.device, dtype=torch.float64)
        return self.parent.weighted_sum(self._per_example(w))

    def moments(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        w = weights.to(device=self.device, dtype=torch.float64)
        sums = torch.stack([self.parent.weighted_sum(self._per_example(row)) for row in w])
        return sums, super().moments(w[:1])[1]

    def dots(self, vector: Tensor) -> Tensor:
        per = self.parent.dots(vector)[: self._units * self.size]
        return per.reshape(self._units, self.size).mean(1)

    def select(self, keep: Tensor) -> GradBlock:
        from gradvar.blocks.dense import DenseBlock

        return DenseBlock(self.rows()[keep])

    def finite(self) -> Tensor:
        ok = self.parent.finite()[: self._units * self.size]
        return ok.reshape(self._units, self.size).all(1)

    def nbytes(self) -> int:
        return self.parent.nbytes()
