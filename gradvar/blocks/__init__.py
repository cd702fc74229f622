"""Compact representations of a batch of per-sample gradients of one parameter tensor.

Statistics never need the per-sample gradients themselves, only a handful of reductions over
them. A *block* holds n per-sample gradients of one parameter in whatever form is cheapest and
implements those reductions exactly, in float64:

- :class:`DenseBlock`: the rows ``[n, *shape]`` (vmap fallback, norm layers, biases);
- :class:`FactoredBlock` / :class:`OuterBlock`: sums of outer products ``Σ_t l_it r_itᵀ``
  (Linear on any leading shape, ``Conv1D``, 1×1 convolutions, repeated calls);
- :class:`SparseRowsBlock`: an embedding table's few touched rows per example;
- :class:`LazyBlock`: a recipe recomputing slabs on demand (convolutions);
- :class:`SumBlock`: one parameter's gradient over several uses of different kinds;
- :class:`GroupedBlock`: mini-batch means of another block.

Adding a new closed form means adding a small block module here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gradvar.blocks._base import F64, GradBlock, slab_bytes
from gradvar.blocks.dense import DenseBlock
from gradvar.blocks.factored import FactoredBlock, OuterBlock
from gradvar.blocks.grouped import GroupedBlock
from gradvar.blocks.lazy import LazyBlock, SumBlock
from gradvar.blocks.moments import Moments, paired_moments, recomputes
from gradvar.blocks.sparse_rows import SparseRowsBlock

__all__ = [
    "F64",
    "GradBlock",
    "DenseBlock",
    "FactoredBlock",
    "OuterBlock",
    "SparseRowsBlock",
    "LazyBlock",
    "SumBlock",
    "GroupedBlock",
    "Moments",
    "paired_moments",
    "recomputes",
    "cat_blocks",
    "sum_blocks",
    "slab_bytes",
]


def cat_blocks(blocks: Sequence[GradBlock]) -> GradBlock:
    """Concatenate blocks of the same parameter along the sample axis."""
    if len(blocks) == 1:
        return blocks[0]
    if all(isinstance(b, FactoredBlock) for b in blocks):
        factored = [b for b in blocks if isinstance(b, FactoredBlock)]
        if len({b.positions for b in factored}) == 1:
            left = torch.cat([b.left for b in factored])
            right = torch.cat([b.right for b in factored])
            return FactoredBlock(left, right, factored[0].shape)
    return DenseBlock(torch.cat([b.rows() for b in blocks]))


def sum_blocks(blocks: Sequence[GradBlock]) -> GradBlock:
    """One parameter's per-sample gradient over several uses: G_i = Σ_u G_i^(u)."""
    if len(blocks) == 1:
        return blocks[0]
    if all(isinstance(b, FactoredBlock) for b in blocks):
        return FactoredBlock.concat(blocks)  # type: ignore[arg-type]
    if all(isinstance(b, DenseBlock) for b in blocks):
        return DenseBlock(sum(b.rows() for b in blocks))  # type: ignore[arg-type]
    return SumBlock(blocks)
