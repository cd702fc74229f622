"""Shared by the normalisation rules: y = x̂ ⊙ w + b, so g_w,i = Σ δ_i ⊙ x̂_i and g_b,i = Σ δ_i.

The sums run over every axis of example i that the parameter is broadcast along.
"""

from __future__ import annotations

from torch import Tensor

from gradvar.blocks import DenseBlock, GradBlock

__all__ = ["channel_affine_blocks", "trailing_affine_blocks"]


def channel_affine_blocks(
    xhat: Tensor, delta: Tensor, has_weight: bool, has_bias: bool
) -> dict[str, GradBlock]:
    """Parameters of shape ``[C]`` on inputs ``[n, C, *spatial]`` (BatchNorm, GroupNorm)."""
    n, c = delta.shape[0], delta.shape[1]
    out: dict[str, GradBlock] = {}
    if has_weight:
        out["weight"] = DenseBlock((delta * xhat).reshape(n, c, -1).sum(2))
    if has_bias:
        out["bias"] = DenseBlock(delta.reshape(n, c, -1).sum(2))
    return out


def trailing_affine_blocks(
    xhat: Tensor, delta: Tensor, shape: tuple[int, ...], has_weight: bool, has_bias: bool
) -> dict[str, GradBlock]:
    """Parameters of ``shape`` on the trailing axes of ``[n, *positions, *shape]`` (LayerNorm)."""
    n = delta.shape[0]
    out: dict[str, GradBlock] = {}
    if has_weight:
        out["weight"] = DenseBlock((delta * xhat).reshape(n, -1, *shape).sum(1))
    if has_bias:
        out["bias"] = DenseBlock(delta.reshape(n, -1, *shape).sum(1))
    return out
