"""Per-sample gradients that are sums of outer products, kept as their factors.

An affine map used at T positions of an example (``nn.Linear`` on ``[n, T, in]``, each call
of a module used several times, a 1×1 convolution, transformers' ``Conv1D``) has the
per-example weight gradient

    G_i = Σ_t l_it r_itᵀ          (l_it: output gradient, r_it: input; METHOD.md §8)

:class:`FactoredBlock` stores ``left`` ``[n, T, O]`` and ``right`` ``[n, T, I]`` and never
forms G_i when T = 1 (:class:`OuterBlock`):

    Σ_i G_i = Lᵀ R (one GEMM over all n·T rows),   Σ_i G_i⊙G_i = (l⊙l)ᵀ(r⊙r)  (T = 1),
    ‖G_i‖² = Σ_{t,s} (l_it·l_is)(r_it·r_is),       ⟨G_i, V⟩ = Σ_t l_itᵀ V r_it.

With T > 1 the elementwise squares no longer factor; they are formed a slab of output rows at
a time by one batched matmul (the same flops as the ordinary weight gradient).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from gradvar.blocks._base import F64, GradBlock

__all__ = ["FactoredBlock", "OuterBlock"]


class FactoredBlock(GradBlock):
    """G_i = Σ_t left[i, t] ⊗ right[i, t], shaped ``shape`` (default ``(O, I)``)."""

    def __init__(self, left: Tensor, right: Tensor, shape: Sequence[int] | None = None) -> None:
        if left.dim() != 3 or right.dim() != 3 or left.shape[:2] != right.shape[:2]:
            raise ValueError(
                f"FactoredBlock needs left [n, T, O] and right [n, T, I] with the same n and T, "
                f"got {tuple(left.shape)} and {tuple(right.shape)}"
            )
        self.left, self.right = left, right
        natural = (left.shape[2], right.shape[2])
        self.shape = torch.Size(natural if shape is None else shape)
        if self.shape[0] != natural[0] or math.prod(self.shape[1:]) != natural[1]:
            raise ValueError(f"shape {tuple(self.shape)} is not a reshape of {natural}")
        self._f64: tuple[Tensor, Tensor] | None = None
        self._norms_sq: Tensor | None = None

    # ------------------------------------------------------------ basics
    @property
    def n(self) -> int:
        return self.left.shape[0]

    @property
    def positions(self) -> int:
        """T, the number of outer products per sample."""
        return self.left.shape[1]

    @property
    def device(self) -> torch.device:
        return self.left.device

    def _factors(self) -> tuple[Tensor, Tensor]:
        if self._f64 is None:
            self._f64 = (self.left.to(F64), self.right.to(F64))
        return self._f64

    def slab(self, lo: int, hi: int) -> Tensor:
        rows = torch.bmm(self.left[:, :, lo:hi].transpose(1, 2), self.right)
        return rows.reshape(self.n, hi - lo, *self.shape[1:])

    def select(self, keep: Tensor) -> FactoredBlock:
        return FactoredBlock(self.left[keep], self.right[keep], self.shape)

    def group(self, size: int) -> FactoredBlock:
        units = self.n // size
        t = self.positions
        left = self.left[: units * size].reshape(units, size * t, -1) / size
        right = self.right[: units * size].reshape(units, size * t, -1)
        return FactoredBlock(left, right, self.shape)

    def finite(self) -> Tensor:
        # Σ_t l_t r_tᵀ is finite when both factors are (0·inf aside, which only hides a NaN
        # that would also show in the loss); a sum is finite iff its terms are (or overflows
        # float64, which no gradient does), so one reduction per factor suffices.
        return torch.isfinite(self.left.sum((1, 2), dtype=F64)) & torch.isfinite(
            self.right.sum((1, 2), dtype=F64)
        )

    def nbytes(self) -> int:
        return (self.left.numel() + self.right.numel()) * self.left.element_size()

    # ------------------------------------------------------------ closed forms
    def weighted_sum(self, weights: Tensor) -> Tensor:
        l, r = self._factors()
        w = weights.to(device=self.device, dtype=F64)
        out = (l * w[:, None, None]).reshape(-1, l.shape[2]).T @ r.reshape(-1, r.shape[2])
        return out.reshape(self.shape)

    def moments(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        w = weights.to(device=self.device, dtype=F64)
        if self.positions == 1:
            l, r = (f[:, 0] for f in self._factors())
            k, out = w.shape[0], l.shape[1]
            stacked = (w[:, :, None] * l[None]).permute(1, 0, 2).reshape(self.n, k * out)
            sums = (stacked.T @ r).reshape(k, *self.shape)  # one matmul for all k sums
            return sums, ((l * l).T @ (r * r)).reshape(self.shape)
        sums = torch.stack([self.weighted_sum(row) for row in w])
        return sums, super().moments(w[:1])[1]

    def sum_cross(self, other: GradBlock) -> Tensor:
        if isinstance(other, FactoredBlock) and self.positions == other.positions == 1:
            l, r = (f[:, 0] for f in self._factors())
            l2, r2 = (f[:, 0] for f in other._factors())
            return ((l * l2).T @ (r * r2)).reshape(self.shape)
        return super().sum_cross(other)

    def norms_sq(self) -> Tensor:
        if self._norms_sq is not None:
            return self._norms_sq
        t, o, i = self.positions, self.left.shape[2], self.right.shape[2]
        if t == 1:
            l, r = self._factors()
            out = (l * l).sum((1, 2)) * (r * r).sum((1, 2))
        elif t * (o + i) < o * i:  # the T×T Gram form is cheaper than forming G_i
            l, r = self._factors()
            out = (torch.bmm(l, l.transpose(1, 2)) * torch.bmm(r, r.transpose(1, 2))).sum((1, 2))
        else:
            out = super().norms_sq()
        self._norms_sq = out
        return out

    def dots(self, vector: Tensor) -> Tensor:
        l, r = self._factors()
        v = vector.reshape(l.shape[2], r.shape[2]).to(device=self.device, dtype=F64)
        return ((l @ v) * r).sum((1, 2))

    def gram(self) -> Tensor:
        if self.positions == 1:
            l, r = (f[:, 0] for f in self._factors())
            return (l @ l.T) * (r @ r.T)
        return super().gram()

    @staticmethod
    def concat(blocks: Sequence[FactoredBlock]) -> FactoredBlock:
        """The sum of several blocks of the same samples: their positions side by side."""
        left = torch.cat([b.left for b in blocks], dim=1)
        right = torch.cat([b.right for b in blocks], dim=1)
        return FactoredBlock(left, right, blocks[0].shape)


class OuterBlock(FactoredBlock):
    """``nn.Linear``'s per-example weight gradient ``G_i = δ_i a_iᵀ`` on 2-D input.

    ``delta`` is ``[n, out]`` (gradient of example i's loss w.r.t. the layer output) and
    ``act`` is ``[n, in]`` (the layer input). ``shape`` is ``(out, in)``.
    """

    def __init__(self, delta: Tensor, act: Tensor) -> None:
        super().__init__(delta[:, None, :], act[:, None, :])

    @property
    def delta(self) -> Tensor:
        return self.left[:, 0]

    @property
    def act(self) -> Tensor:
        return self.right[:, 0]
