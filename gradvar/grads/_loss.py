"""Per-example losses from a user loss function, whatever its reduction."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor
from torch.func import vmap

LossFn = Callable[[Tensor, Tensor], Tensor]

__all__ = ["LossFn", "per_example_losses", "single_example_loss"]


def single_example_loss(loss_fn: LossFn, output: Tensor, target: Tensor) -> Tensor:
    """The loss of one example: ``loss_fn`` on a batch of one, reduced to a scalar.

    A batch of one makes ``mean`` and ``sum`` reductions agree; a ``none`` reduction (or a
    per-token loss) is summed, which is that example's loss.
    """
    loss = loss_fn(output[None], target[None])
    return loss.sum() if loss.dim() > 0 else loss


def per_example_losses(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    """``[n]`` losses f_i, evaluated per example so the user's reduction never matters."""
    return vmap(lambda o, t: single_example_loss(loss_fn, o, t))(outputs, targets)
