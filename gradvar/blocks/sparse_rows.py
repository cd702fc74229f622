"""Per-example gradients of an embedding table: a few rows per example.

For ``nn.Embedding`` with weight ``[V, d]`` and example i's tokens x_i1..x_iT, the gradient is
G_i = Σ_t e_{x_it} δ_itᵀ: row v of G_i is S_iv = Σ_{t: x_it = v} δ_it, zero elsewhere (and zero
for ``padding_idx``). :class:`SparseRowsBlock` keeps only the touched (example, row) pairs:

    Σ_i G_i = Σ_(i,v) e_v S_ivᵀ,   Σ_i G_i⊙G_i = Σ_(i,v) e_v (S_iv⊙S_iv)ᵀ,   ‖G_i‖² = Σ_v ‖S_iv‖²,

and Σ_i G_i⊙H_i pairs the rows of two blocks over the same tokens (the current and snapshot
weights see the same inputs).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradvar.blocks._base import F64, GradBlock

__all__ = ["SparseRowsBlock"]


class SparseRowsBlock(GradBlock):
    """G_i with rows ``S[k]`` at (example ``owner[k]``, table row ``row[k]``), shape [V, d]."""

    def __init__(
        self, owner: Tensor, row: Tensor, values: Tensor, n: int, shape, source: object = None
    ) -> None:
        self.owner, self.row, self.values = owner, row, values
        self._n = n
        self.shape = torch.Size(shape)
        self.source = source  # identifies the token tensor: equal sources, equal layout
        self._norms_sq: Tensor | None = None
        self._tokens: Tensor | None = None

    @classmethod
    def from_tokens(
        cls, tokens: Tensor, delta: Tensor, num_rows: int, padding_idx: int | None
    ) -> SparseRowsBlock:
        """From token ids ``[n, T]`` (any trailing shape) and output gradients ``[n, T, d]``.

        Equal (example, row) keys are merged by a sort and a segment sum — no host sync (a
        ``torch.unique`` would need one); unused segments stay as zero rows at (0, 0).
        """
        n = tokens.shape[0]
        ids = tokens.reshape(n, -1)
        d = delta.reshape(n, ids.shape[1], -1)
        if padding_idx is not None:
            d = d.masked_fill((ids == padding_idx % num_rows)[:, :, None], 0)
        keys = (torch.arange(n, device=ids.device)[:, None] * num_rows + ids).reshape(-1)
        keys, order = torch.sort(keys)
        starts = torch.ones_like(keys, dtype=torch.bool)
        starts[1:] = keys[1:] != keys[:-1]
        segment = torch.cumsum(starts, 0) - 1
        flat = d.reshape(-1, d.shape[2])[order]
        values = torch.zeros_like(flat).index_add_(0, segment, flat)
        seg_keys = torch.zeros_like(keys).scatter_(0, segment, keys)
        owner, row = seg_keys // num_rows, seg_keys % num_rows
        source = (tokens.data_ptr(), tuple(tokens.shape), tokens.device)
        block = cls(owner, row, values, n, (num_rows, d.shape[2]), source)
        block._tokens = tokens  # keeps the address in ``source`` from being reused
        return block

    @property
    def n(self) -> int:
        return self._n

    @property
    def device(self) -> torch.device:
        return self.values.device

    def _scatter_rows(self, per_pair: Tensor) -> Tensor:
        out = torch.zeros(self.shape, dtype=F64, device=self.device)
        return out.index_add_(0, self.row, per_pair)

    def _same_tokens(self, other: GradBlock) -> bool:
        return (
            isinstance(other, SparseRowsBlock)
            and self.source is not None
            and other.source == self.source
        )

    def slab(self, lo: int, hi: int) -> Tensor:
        out = torch.zeros(
            self.n, hi - lo, self.shape[1], dtype=self.values.dtype, device=self.device
        )
        inside = (self.row >= lo) & (self.row < hi)  # masked, not indexed: no host sync
        local = (self.row - lo).clamp(0, hi - lo - 1)
        values = self.values * inside[:, None].to(self.values.dtype)
        out.index_put_((self.owner, local), values, accumulate=True)
        return out

    def weighted_sum(self, weights: Tensor) -> Tensor:
        w = weights.to(device=self.device, dtype=F64)
        return self._scatter_rows(self.values.to(F64) * w[self.owner, None])

    def moments(self, weights: Tensor) -> tuple[Tensor, Tensor]:
        v = self.values.to(F64)
        w = weights.to(device=self.device, dtype=F64)
        sums = torch.stack([self._scatter_rows(v * row[self.owner, None]) for row in w])
        return sums, self._scatter_rows(v * v)

    def sum_cross(self, other: GradBlock) -> Tensor:
        if self._same_tokens(other):
            assert isinstance(other, SparseRowsBlock)
            return self._scatter_rows(self.values.to(F64) * other.values.to(F64))
        return super().sum_cross(other)

    def norms_sq(self) -> Tensor:
        if self._norms_sq is None:
            per_pair = (self.values.to(F64) ** 2).sum(1)
            out = torch.zeros(self.n, dtype=F64, device=self.device)
            self._norms_sq = out.index_add_(0, self.owner, per_pair)
        return self._norms_sq

    def dots(self, vector: Tensor) -> Tensor:
        v = vector.reshape(self.shape).to(device=self.device, dtype=F64)
        per_pair = (self.values.to(F64) * v[self.row]).sum(1)
        return torch.zeros(self.n, dtype=F64, device=self.device).index_add_(
            0, self.owner, per_pair
        )

    def select(self, keep: Tensor) -> SparseRowsBlock:
        new_index = torch.cumsum(keep.long(), 0) - 1
        m = keep[self.owner]
        return SparseRowsBlock(
            new_index[self.owner[m]],
            self.row[m],
            self.values[m],
            int(keep.sum()),
            self.shape,
            None if self.source is None else (*self.source, "selected", keep.data_ptr()),
        )

    def finite(self) -> Tensor:
        per_pair = self.values.sum(1, dtype=F64)  # finite iff every entry is
        total = torch.zeros(self.n, dtype=F64, device=self.device)
        return torch.isfinite(total.index_add_(0, self.owner, per_pair))

    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size() + 16 * self.owner.numel()
