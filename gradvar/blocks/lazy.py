"""Blocks given by a recipe that recomputes slabs on demand, and sums of blocks.

:class:`LazyBlock` serves layers whose per-example gradient is cheap to recompute but large
to hold (a convolution's, formed by one grouped weight-gradient convolution per slab of output
channels). :class:`SumBlock` is a parameter's gradient over several uses of different kinds
(a tied embedding and output head): G_i = Σ_u G_i^(u), with every linear reduction summed and
the rest formed from summed slabs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gradvar.blocks._base import GradBlock

__all__ = ["LazyBlock", "SumBlock"]


class LazyBlock(GradBlock):
    """``slab_fn(lo, hi) → [n, hi − lo, *shape[1:]]``; ``sum_fn()`` (optional) gives Σ_i g_i.

    ``finite_fn()`` → bool ``[n]``; ``select_fn(keep)`` → a new LazyBlock; ``nbytes`` counts
    what the recipe keeps alive (its inputs).
    """

    def __init__(
        self,
        shape: Sequence[int],
        n: int,
        device: torch.device,
        slab_fn: Callable[[int, int], Tensor],
        finite_fn: Callable[[], Tensor],
        select_fn: Callable[[Tensor], GradBlock],
        nbytes: int,
        sum_fn: Callable[[], Tensor] | None = None,
    ) -> None:
        self.shape = torch.Size(shape)
        self._n, self._device, self._nbytes = n, device, nbytes
        self._slab_fn, self._finite_fn, self._select_fn = slab_fn, finite_fn, select_fn
        self._sum_fn = sum_fn
        self._norms_sq: Tensor | None = None

    @property
    def n(self) -> int:
        return self._n

    @property
    def device(self) -> torch.device:
        return self._device

    def slab(self, lo: int, hi: int) -> Tensor:
        return self._slab_fn(lo, hi)

    def sum(self) -> Tensor:
        if self._sum_fn is not None:
            return self._sum_fn().to(torch.float64).reshape(self.shape)
        return super().sum()

    def norms_sq(self) -> Tensor:
        if self._norms_sq is None:
            self._norms_sq = super().norms_sq()
        return self._norms_sq

    def select(self, keep: Tensor) -> GradBlock:
        return self._select_fn(keep)

    def finite(self) -> Tensor:
        return self._finite_fn()

    def nbytes(self) -> int:
        return self._nbytes


class SumBlock(GradBlock):
    """G_i = Σ_u parts[u]_i: one parameter used by several modules or calls."""

    def __init__(self, parts: Sequence[GradBlock]) -> None:
        self.parts = list(parts)
        self.shape = self.parts[0].shape
        self._norms_sq: Tensor | None = None

    @property
    def n(self) -> int:
        return self.parts[0].n

    @property
    def device(self) -> torch.device:
        return self.parts[0].device

    def slab(self, lo: int, hi: int) -> Tensor:
        out = self.parts[0].slab(lo, hi)
        for part in self.parts[1:]:
            out = out + part.slab(lo, hi)
        return out

    def weighted_sum(self, weights: Tensor) -> Tensor:
        return sum(p.weighted_sum(weights) for p in self.parts)  # type: ignore[return-value]

    def dots(self, vector: Tensor) -> Tensor:
        return sum(p.dots(vector) for p in self.parts)  # type: ignore[return-value]

    def norms_sq(self) -> Tensor:
        if self._norms_sq is None:
            self._norms_sq = super().norms_sq()
        return self._norms_sq

    def select(self, keep: Tensor) -> SumBlock:
        return SumBlock([p.select(keep) for p in self.parts])

    def finite(self) -> Tensor:
        ok = self.parts[0].finite()
        for part in self.parts[1:]:
            ok = ok & part.finite()
        return ok

    def nbytes(self) -> int:
        return sum(p.nbytes() for p in self.parts)
