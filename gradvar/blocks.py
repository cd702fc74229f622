"""Compact representations of a batch of per-sample gradients of one parameter tensor.

Statistics never need the per-sample gradients themselves, only a handful of reductions over
them. A *block* holds n per-sample gradients of one parameter in whatever form is cheapest and
implements those reductions exactly:

- :class:`DenseBlock` stores the rows ``[n, *shape]`` (the vmap path, mini-batch gradients);
- :class:`OuterBlock` stores the factors of ``nn.Linear``'s per-example weight gradient
  ``G_i = δ_i a_iᵀ`` (METHOD.md §8) and never forms G_i:

      Σ_i G_i = δᵀa,   Σ_i G_i⊙G_i = (δ⊙δ)ᵀ(a⊙a),   Σ_i G_i⊙H_i = (δ⊙δ̃)ᵀ(a⊙ã),
      ‖G_i‖² = ‖δ_i‖²‖a_i‖²,   ⟨G_i, G_j⟩ = (δ_i·δ_j)(a_i·a_j),   ⟨G_i, V⟩ = δ_iᵀ V a_i.

All reductions return float64. Adding a new closed form means adding a block class here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

__all__ = ["GradBlock", "DenseBlock", "OuterBlock", "cat_blocks"]

_F64 = torch.float64


class GradBlock(ABC):
    """n per-sample gradients of one parameter of shape ``shape``."""

    shape: torch.Size

    @property
    @abstractmethod
    def n(self) -> int:
        """Number of samples in the block."""

    def moments(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        """(Σ_i w_ki g_i for every row k of ``weights`` [k, n] → [k, *shape], Σ_i g_i ⊙ g_i).

        One read of the block for all of a chunk's first and second moments; subclasses
        override it with a fused implementation.
        """
        sums = torch.stack([self.weighted_sum(w) for w in weights])
        return sums, self.sum_sq()

    @abstractmethod
    def sum(self) -> Tensor:
        """Σ_i g_i, shape ``shape``."""

    @abstractmethod
    def sum_sq(self) -> Tensor:
        """Σ_i g_i ⊙ g_i, shape ``shape``."""

    @abstractmethod
    def sum_cross(self, other: GradBlock) -> Tensor:
        """Σ_i g_i ⊙ h_i for a block ``other`` of the same samples (same type), shape ``shape``."""

    @abstractmethod
    def norms_sq(self) -> Tensor:
        """‖g_i‖², shape ``[n]``."""

    @abstractmethod
    def weighted_sum(self, weights: Tensor) -> Tensor:
        """Σ_i w_i g_i for ``weights`` of shape ``[n]``, shape ``shape``."""

    @abstractmethod
    def dots(self, vector: Tensor) -> Tensor:
        """⟨g_i, v⟩ for a tensor ``v`` of shape ``shape``, shape ``[n]``."""

    @abstractmethod
    def gram(self) -> Tensor:
        """The n×n matrix of inner products ⟨g_i, g_j⟩."""

    @abstractmethod
    def rows(self) -> Tensor:
        """The per-sample gradients themselves, ``[n, *shape]`` (materialises them)."""

    @abstractmethod
    def select(self, keep: Tensor) -> GradBlock:
        """The block restricted to the samples where the boolean ``keep`` ([n]) is true."""

    @abstractmethod
    def finite(self) -> Tensor:
        """Boolean ``[n]``: whether sample i's gradient is entirely finite."""

    @abstractmethod
    def nbytes(self) -> int:
        """Bytes held by the block (to budget keeping blocks for the Gram matrix)."""


_SLAB_BYTES = 4 << 20  # float64 working set per column slab on CPU: stays in cache


class DenseBlock(GradBlock):
    """Per-sample gradients stored as rows ``[n, *shape]``.

    Reductions read the rows in column slabs converted to float64 once each (a few MiB on
    CPU, the whole block on a GPU), never a float64 copy of the whole block per reduction.
    """

    def __init__(self, rows: Tensor) -> None:
        self._rows = rows
        self.shape = rows.shape[1:]
        self._norms_sq: Tensor | None = None

    def _slabs(self, *others: Tensor) -> Iterator[tuple[slice, list[Tensor]]]:
        """(columns, [float64 slab of self and of each ``others`` rows]) over all columns."""
        flats = [t.reshape(self.n, math.prod(self.shape)) for t in (self._rows, *others)]
        width = flats[0].shape[1]
        if self._rows.is_cuda:
            step = max(width, 1)
        else:
            step = max(1, _SLAB_BYTES // (8 * max(self.n, 1) * len(flats)))
        for start in range(0, width, step):
            cols = slice(start, min(start + step, width))
            yield cols, [f[:, cols].to(_F64) for f in flats]

    def moments(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        k, width = weights.shape[0], math.prod(self.shape)
        w = weights.to(device=self._rows.device, dtype=_F64)
        sums = torch.zeros(k, width, dtype=_F64, device=self._rows.device)
        squares = torch.zeros(width, dtype=_F64, device=self._rows.device)
        for cols, (slab,) in self._slabs():
            sums[:, cols] = w @ slab
            squares[cols] = (slab * slab).sum(0)
        return sums.reshape(k, *self.shape), squares.reshape(self.shape)

    @property
    def n(self) -> int:
        return self._rows.shape[0]

    def _flat(self) -> Tensor:
        return self._rows.reshape(self.n, math.prod(self.shape)).to(_F64)

    def sum(self) -> Tensor:
        return self._flat().sum(0).reshape(self.shape)

    def sum_sq(self) -> Tensor:
        flat = self._flat()
        return (flat * flat).sum(0).reshape(self.shape)

    def sum_cross(self, other: GradBlock) -> Tensor:
        out = torch.zeros(math.prod(self.shape), dtype=_F64, device=self._rows.device)
        for cols, (mine, theirs) in self._slabs(other.rows()):
            out[cols] = (mine * theirs).sum(0)
        return out.reshape(self.shape)

    def norms_sq(self) -> Tensor:
        if self._norms_sq is None:
            flat = self._rows.reshape(self.n, math.prod(self.shape))
            self._norms_sq = torch.linalg.vector_norm(flat, dim=1, dtype=_F64) ** 2
        return self._norms_sq

    def weighted_sum(self, weights: Tensor) -> Tensor:
        return (weights.to(_F64) @ self._flat()).reshape(self.shape)

    def dots(self, vector: Tensor) -> Tensor:
        return self._flat() @ vector.reshape(-1).to(_F64)

    def gram(self) -> Tensor:
        flat = self._flat()
        return flat @ flat.T

    def rows(self) -> Tensor:
        return self._rows

    def select(self, keep: Tensor) -> DenseBlock:
        return DenseBlock(self._rows[keep])

    def finite(self) -> Tensor:
        # A float64 sum of squares of float32 (or float64 → inf on overflow, still caught)
        # entries is finite iff every entry is.
        finite = torch.isfinite(self.norms_sq())
        if self._rows.dtype == _F64:  # a float64 square may overflow: check the entries
            finite &= torch.isfinite(self._rows.reshape(self.n, math.prod(self.shape))).all(1)
        return finite

    def nbytes(self) -> int:
        return self._rows.numel() * self._rows.element_size()


class OuterBlock(GradBlock):
    """Per-example weight gradients of ``nn.Linear``, ``G_i = δ_i a_iᵀ``, kept as factors.

    ``delta`` is ``[n, out]`` (gradient of example i's loss w.r.t. the layer output) and
    ``act`` is ``[n, in]`` (the layer input). ``shape`` is ``(out, in)``.
    """

    def __init__(self, delta: Tensor, act: Tensor) -> None:
        self.delta = delta
        self.act = act
        self.shape = torch.Size((delta.shape[1], act.shape[1]))
        self._f64: tuple[Tensor, Tensor] | None = None

    @property
    def n(self) -> int:
        return self.delta.shape[0]

    def _factors(self) -> tuple[Tensor, Tensor]:
        if self._f64 is None:  # small: n × (in + out)
            self._f64 = (self.delta.to(_F64), self.act.to(_F64))
        return self._f64

    def moments(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        d, a = self._factors()
        k, out = weights.shape[0], d.shape[1]
        w = weights.to(device=d.device, dtype=_F64)
        stacked = (w[:, :, None] * d[None]).permute(1, 0, 2).reshape(self.n, k * out)
        sums = (stacked.T @ a).reshape(k, out, a.shape[1])  # one matmul for all k sums
        return sums, (d * d).T @ (a * a)

    def sum(self) -> Tensor:
        d, a = self._factors()
        return d.T @ a

    def sum_sq(self) -> Tensor:
        d, a = self._factors()
        return (d * d).T @ (a * a)

    def sum_cross(self, other: GradBlock) -> Tensor:
        if not isinstance(other, OuterBlock):
            return (self.rows().to(_F64) * other.rows().to(_F64)).sum(0)
        d, a = self._factors()
        d2, a2 = other._factors()
        return (d * d2).T @ (a * a2)

    def norms_sq(self) -> Tensor:
        d, a = self._factors()
        return (d * d).sum(1) * (a * a).sum(1)

    def weighted_sum(self, weights: Tensor) -> Tensor:
        d, a = self._factors()
        return (d * weights.to(_F64)[:, None]).T @ a

    def dots(self, vector: Tensor) -> Tensor:
        d, a = self._factors()
        return ((d @ vector.reshape(self.shape).to(_F64)) * a).sum(1)

    def gram(self) -> Tensor:
        d, a = self._factors()
        return (d @ d.T) * (a @ a.T)

    def rows(self) -> Tensor:
        return self.delta[:, :, None] * self.act[:, None, :]

    def select(self, keep: Tensor) -> OuterBlock:
        return OuterBlock(self.delta[keep], self.act[keep])

    def finite(self) -> Tensor:
        # δ_i a_iᵀ is finite iff both factors are, except 0·inf; form it only in that rare case.
        ok = torch.isfinite(self.delta).all(1) & torch.isfinite(self.act).all(1)
        return ok

    def nbytes(self) -> int:
        return (self.delta.numel() + self.act.numel()) * self.delta.element_size()


def cat_blocks(blocks: Sequence[GradBlock]) -> GradBlock:
    """Concatenate blocks of the same parameter along the sample axis."""
    if all(isinstance(b, OuterBlock) for b in blocks):
        outer = [b for b in blocks if isinstance(b, OuterBlock)]
        return OuterBlock(torch.cat([b.delta for b in outer]), torch.cat([b.act for b in outer]))
    return DenseBlock(torch.cat([b.rows() for b in blocks]))
