"""All of a chunk's moments of one parameter from its current and snapshot blocks, in one pass.

For n samples with current gradients g_i, snapshot gradients h_i and weight rows w_k:

    Σ_i w_ki g_i (k rows),  Σ g⊙g,  Σ h,  Σ h⊙h,  Σ g⊙h.

Closed forms where both blocks have them (outer products on 2-D inputs, embedding rows over
the same tokens); otherwise each slab of g and of h is formed once and every moment read from
it — a recomputed block (a convolution's) is materialised once per weight set, not once per
moment.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gradvar.blocks._base import F64, GradBlock
from gradvar.blocks.dense import DenseBlock
from gradvar.blocks.factored import FactoredBlock
from gradvar.blocks.sparse_rows import SparseRowsBlock

__all__ = ["Moments", "paired_moments", "recomputes", "sum_sq_columns"]


@dataclass
class Moments:
    """Float64 moments of one parameter over a chunk (``h``-fields None when unpaired)."""

    weighted: Tensor  # [k, *shape]
    g2: Tensor
    h: Tensor | None = None
    h2: Tensor | None = None
    gh: Tensor | None = None
    gram: Tensor | None = None  # [n, n] of g, when asked for


def recomputes(block: GradBlock) -> bool:
    """Whether every read of ``block`` recomputes its gradients (worth materialising once)."""
    if isinstance(block, (DenseBlock, SparseRowsBlock)):
        return False
    return not (isinstance(block, FactoredBlock) and block.positions == 1)


def _closed_forms(g: GradBlock, h: GradBlock) -> bool:
    if isinstance(g, FactoredBlock) and isinstance(h, FactoredBlock):
        return g.positions == h.positions == 1
    if isinstance(g, SparseRowsBlock) and isinstance(h, SparseRowsBlock):
        return g.source is not None and g.source == h.source
    return False


def sum_sq_columns(rows: Tensor) -> Tensor:
    """Σ_i rows[i]² per column: one fused reduction on a GPU (vector_norm over the sample
    axis is slow on CPU, where multiply-and-sum is faster)."""
    if rows.is_cuda:
        return torch.linalg.vector_norm(rows, dim=0).square_()
    return (rows * rows).sum(0)


def paired_moments(
    g: GradBlock, h: GradBlock | None, weights: Tensor, *, gram: bool = False
) -> Moments:
    """The moments of ``g`` (weighted by each row of ``weights`` [k, n]) and, if given, ``h``;
    with ``gram`` also the n×n Gram matrix of g, from the same slabs (no second pass)."""
    if (h is None and not recomputes(g)) or (h is not None and _closed_forms(g, h)):
        weighted, g2 = g.moments(weights)
        out = Moments(weighted, g2)
        if h is not None:
            h_sum, h2 = h.moments(torch.ones(1, h.n, dtype=F64, device=h.device))
            out.h, out.h2, out.gh = h_sum[0], h2, g.sum_cross(h)
        out.gram = g.gram() if gram else None
        return out
    w = weights.to(device=g.device, dtype=F64)
    k = w.shape[0]
    weighted, g2 = g._empty(k), g._empty()
    if h is not None:
        h_sum, h2, gh = g._empty(), g._empty(), g._empty()
    gram_acc = torch.zeros(g.n, g.n, dtype=F64, device=g.device) if gram else None
    for lo, hi in g.slab_ranges(tensors=2 if h is not None else 1):
        cols = g._columns(lo, hi)
        gs = g.flat_slab(lo, hi)
        weighted[:, cols] = w @ gs
        g2[cols] = sum_sq_columns(gs)
        if gram_acc is not None:
            gram_acc += gs @ gs.T
        if h is not None:
            hs = h.flat_slab(lo, hi)
            h_sum[cols] = hs.sum(0)
            h2[cols] = sum_sq_columns(hs)
            gh[cols] = torch.linalg.vecdot(gs, hs, dim=0)
    shape = g.shape
    out = Moments(weighted.reshape(k, *shape), g2.reshape(shape), gram=gram_acc)
    if h is not None:
        out.h, out.h2, out.gh = h_sum.reshape(shape), h2.reshape(shape), gh.reshape(shape)
    return out
