"""Per-sample gradients stored as rows ``[n, *shape]`` (vmap fallback, norm-layer rules)."""

from __future__ import annotations

import torch
from torch import Tensor

from gradvar.blocks._base import F64, GradBlock

__all__ = ["DenseBlock"]


class DenseBlock(GradBlock):
    """Per-sample gradients stored as rows ``[n, *shape]``.

    Reductions read the rows in slabs converted to float64 once each (see
    :mod:`gradvar.blocks._base`), never a float64 copy of the whole block per reduction.
    """

    def __init__(self, rows: Tensor) -> None:
        self._rows = rows
        self.shape = rows.shape[1:]
        self._norms_sq: Tensor | None = None

    @property
    def n(self) -> int:
        return self._rows.shape[0]

    @property
    def device(self) -> torch.device:
        return self._rows.device

    def slab(self, lo: int, hi: int) -> Tensor:
        if not len(self.shape):
            return self._rows.reshape(self.n, 1)
        return self._rows[:, lo:hi]

    def sum(self) -> Tensor:
        return self._rows.to(F64).sum(0)

    def norms_sq(self) -> Tensor:
        if self._norms_sq is None:
            # In the rows' own dtype (a float64 copy of the block would cost more than the
            # norms): a float32 norm has float32's relative precision, ample for 1/‖g_i‖.
            flat = self._rows.reshape(self.n, -1)
            self._norms_sq = torch.linalg.vector_norm(flat, dim=1).to(F64) ** 2
        return self._norms_sq

    def rows(self) -> Tensor:
        return self._rows

    def select(self, keep: Tensor) -> DenseBlock:
        return DenseBlock(self._rows[keep])

    def group(self, size: int) -> DenseBlock:
        units = self.n // size
        return DenseBlock(self._rows[: units * size].reshape(units, size, *self.shape).mean(1))

    def finite(self) -> Tensor:
        # A float64 sum is finite iff every term is (float32 terms cannot overflow it).
        return torch.isfinite(self._rows.reshape(self.n, -1).sum(1, dtype=F64))

    def nbytes(self) -> int:
        return self._rows.numel() * self._rows.element_size()
