"""The alpha-SVRG correction ``v = g − α (h − μ̃)`` as in-place foreach kernels.

It is applied in two halves: ``g ← g − α h`` (folding the snapshot gradient into ``.grad``) and
``g ← g + α μ̃`` (adding the mean gradient). :class:`~gradvar.optim.AlphaSVRG` folds ``h`` right
after its backward, so ``g − α h`` carries the same loss scale as ``g`` and a ``GradScaler``
unscales and inf-checks both at once; ``μ̃`` (unscaled) is added after unscaling.

``alpha`` may be a Python float or a 0-d tensor. A tensor alpha is an input of a compiled graph,
not a constant, so ``torch.compile`` of these functions does not recompile as alpha changes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["fold_snapshot_grads_", "add_mean_grads_", "variance_reduce_"]


def _by_device_and_dtype(*lists: Sequence[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel tensor lists by the (device, dtype) of the first: one kernel per group."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = {}
    for items in zip(*lists):
        key = (items[0].device, items[0].dtype)
        out = groups.setdefault(key, tuple([] for _ in lists))
        for target, tensor in zip(out, items):
            target.append(tensor)
    return list(groups.values())


def _add_scaled_(
    targets: Sequence[Tensor], sources: Sequence[Tensor], alpha: float | Tensor
) -> None:
    """``t ← t + alpha · s`` for every pair (t, s)."""
    for ts, ss in _by_device_and_dtype(targets, sources):
        if isinstance(alpha, Tensor):
            torch._foreach_add_(ts, torch._foreach_mul(ss, alpha))
        else:
            torch._foreach_add_(ts, ss, alpha=alpha)


def fold_snapshot_grads_(
    grads: Sequence[Tensor], snapshot_grads: Sequence[Tensor], alpha: float | Tensor
) -> None:
    """``g ← g − α h`` in place: the snapshot half of ``v = g − α (h − μ̃)``."""
    _add_scaled_(grads, snapshot_grads, -alpha)


def add_mean_grads_(
    grads: Sequence[Tensor], mean_grads: Sequence[Tensor], alpha: float | Tensor
) -> None:
    """``g ← g + α μ̃`` in place: the mean-gradient half of ``v = g − α (h − μ̃)``."""
    _add_scaled_(grads, mean_grads, alpha)


def variance_reduce_(
    grads: Sequence[Tensor],
    snapshot_grads: Sequence[Tensor],
    mean_grads: Sequence[Tensor],
    alpha: float | Tensor,
) -> None:
    """``v = g − α (h − μ̃)`` written into ``grads``, computed as ``(g − α h) + α μ̃``.

    Args:
        grads: ``g``, the current mini-batch gradients (overwritten with ``v``).
        snapshot_grads: ``h``, the same mini-batch's gradients at the snapshot weights θ̃.
        mean_grads: ``μ̃``, the mean gradient at the snapshot.
        alpha: ``α_t``, a float or a 0-d tensor (no recompilation as it changes).
    """
    fold_snapshot_grads_(grads, snapshot_grads, alpha)
    add_mean_grads_(grads, mean_grads, alpha)
