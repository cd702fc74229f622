"""The block interface and the generic, slab-streamed reductions every block inherits.

A *block* holds n per-sample gradients of one parameter tensor in whatever form is cheapest
(rows, factors, sparse rows, a recipe to recompute them) and implements the handful of
reductions the statistics need. The generic implementations below materialise the gradients
one *slab* at a time — all n samples, a range of the parameter's first axis — converted to
float64 once per slab, so peak memory is a slab (a few MiB on CPU, at most ``GPU_SLAB_BYTES``
on a GPU), never the whole ``[n, *shape]`` block in float64. Subclasses override a reduction
where a closed form is cheaper.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["GradBlock", "F64", "slab_bytes"]

F64 = torch.float64
CPU_SLAB_BYTES = 4 << 20  # float64 working set per slab on CPU: stays in cache
GPU_SLAB_BYTES = 1 << 30  # fewer, larger slabs: each costs a handful of kernel launches


def slab_bytes(device: torch.device) -> int:
    """The float64 working-set budget of one slab on ``device``."""
    return GPU_SLAB_BYTES if device.type == "cuda" else CPU_SLAB_BYTES


class GradBlock(ABC):
    """n per-sample gradients of one parameter of shape ``shape``.

    Subclasses implement :meth:`slab` (the gradients of every sample for a range of the first
    axis), ``n``, ``device``, :meth:`select`, :meth:`finite` and :meth:`nbytes`; every
    reduction has a generic slab-streamed form here.
    """

    shape: torch.Size
    align: int = 1  # slabs start and end at multiples of this (a convolution's group size)

    # ------------------------------------------------------------ what subclasses provide
    @property
    @abstractmethod
    def n(self) -> int:
        """Number of samples in the block."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the block's tensors live."""

    @abstractmethod
    def slab(self, lo: int, hi: int) -> Tensor:
        """Per-sample gradients ``[n, hi − lo, *shape[1:]]`` for first-axis entries lo..hi."""

    @abstractmethod
    def select(self, keep: Tensor) -> GradBlock:
        """The block restricted to the samples where the boolean ``keep`` ([n]) is true."""

    @abstractmethod
    def finite(self) -> Tensor:
        """Boolean ``[n]``: whether sample i's gradient is entirely finite."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the block."""

    # ------------------------------------------------------------ slab machinery
    @property
    def rows_per_axis(self) -> int:
        """Length of the first axis (1 for a scalar parameter)."""
        return self.shape[0] if len(self.shape) else 1

    @property
    def inner(self) -> int:
        """Coordinates per first-axis entry."""
        return math.prod(self.shape[1:]) if len(self.shape) else 1

    def slab_ranges(self, tensors: int = 1) -> Iterator[tuple[int, int]]:
        """First-axis ranges whose float64 slabs (``tensors`` of them at once) fit the budget."""
        per_entry = 8 * max(self.n, 1) * self.inner * tensors
        step = max(1, slab_bytes(self.device) // max(per_entry, 1))
        step = max(self.align, step - step % self.align)
        total = self.rows_per_axis
        for lo in range(0, total, step):
            yield lo, min(lo + step, total)

    def flat_slab(self, lo: int, hi: int) -> Tensor:
        """:meth:`slab` as float64 ``[n, (hi − lo) · inner]``."""
        return self.slab(lo, hi).reshape(self.n, (hi - lo) * self.inner).to(F64)

    def _columns(self, lo: int, hi: int) -> slice:
        return slice(lo * self.inner, hi * self.inner)

    def _empty(self, *lead: int) -> Tensor:
        return torch.zeros(*lead, self.rows_per_axis * self.inner, dtype=F64, device=self.device)

    # ------------------------------------------------------------ generic reductions
    def moments(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ_i w_ki g_i for every row k of ``weights`` [k, n] → [k, *shape], Σ_i g_i ⊙ g_i)."""
        w = weights.to(device=self.device, dtype=F64)
        sums, squares = self._empty(w.shape[0]), self._empty()
        for lo, hi in self.slab_ranges():
            slab, cols = self.flat_slab(lo, hi), self._columns(lo, hi)
            sums[:, cols] = w @ slab
            squares[cols] = (slab * slab).sum(0)
        return sums.reshape(w.shape[0], *self.shape), squares.reshape(self.shape)

    def sum(self) -> Tensor:
        """Σ_i g_i, float64, shape ``shape``."""
        return self.weighted_sum(torch.ones(self.n, dtype=F64, device=self.device))

    def sum_sq(self) -> Tensor:
        """Σ_i g_i ⊙ g_i, float64, shape ``shape``."""
        return self.moments(torch.ones(1, self.n, dtype=F64))[1]

    def sum_cross(self, other: GradBlock) -> Tensor:
        """Σ_i g_i ⊙ h_i for a block ``other`` of the same samples, shape ``shape``."""
        out = self._empty()
        for lo, hi in self.slab_ranges(2):
            out[self._columns(lo, hi)] = (self.flat_slab(lo, hi) * other.flat_slab(lo, hi)).sum(0)
        return out.reshape(self.shape)

    def norms_sq(self) -> Tensor:
        """‖g_i‖², float64 ``[n]``."""
        out = torch.zeros(self.n, dtype=F64, device=self.device)
        for lo, hi in self.slab_ranges():
            slab = self.flat_slab(lo, hi)
            out += (slab * slab).sum(1)
        return out

    def weighted_sum(self, weights: Tensor) -> Tensor:
        """Σ_i w_i g_i for ``weights`` of shape ``[n]``, float64, shape ``shape``."""
        return self.moments(weights.reshape(1, -1))[0][0]

    def dots(self, vector: Tensor) -> Tensor:
        """⟨g_i, v⟩ for a tensor ``v`` of shape ``shape``, float64 ``[n]``."""
        flat = vector.reshape(-1).to(device=self.device, dtype=F64)
        out = torch.zeros(self.n, dtype=F64, device=self.device)
        for lo, hi in self.slab_ranges():
            out += self.flat_slab(lo, hi) @ flat[self._columns(lo, hi)]
        return out

    def gram(self) -> Tensor:
        """The n×n float64 matrix of inner products ⟨g_i, g_j⟩."""
        out = torch.zeros(self.n, self.n, dtype=F64, device=self.device)
        for lo, hi in self.slab_ranges():
            slab = self.flat_slab(lo, hi)
            out += slab @ slab.T
        return out

    def rows(self) -> Tensor:
        """The per-sample gradients themselves, ``[n, *shape]`` (materialises them)."""
        return self.slab(0, self.rows_per_axis).reshape(self.n, *self.shape)

    def group(self, size: int) -> GradBlock:
        """Mini-batch gradients: the mean over consecutive groups of ``size`` samples."""
        from gradvar.blocks.grouped import GroupedBlock

        return GroupedBlock(self, size)
