"""Per-sample gradients of arbitrary parameters through ``torch.func`` (vmap of grad)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from gradvar.blocks import DenseBlock, GradBlock
from gradvar.grads._loss import LossFn, per_example_losses, single_example_loss

__all__ = ["vmap_blocks"]


def vmap_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    wanted: list[str],
    inputs: Tensor,
    targets: Tensor,
    unit_size: int | None,
) -> dict[str, GradBlock]:
    """Blocks of the per-sample gradients of the parameters in ``wanted``.

    Per example: g_i = ∇_θ f(θ; x_i, y_i). Mini-batch unit b: g_B = ∇_θ (1/b) Σ_{i∈B} f_i,
    with consecutive groups of b examples. Parameters outside ``wanted`` are constants.
    Dropout draws different masks per example (``randomness="different"``), the same
    masks a batched forward draws from the same RNG state.
    """
    if not wanted:
        return {}
    fixed = {k: v.detach() for k, v in params.items() if k not in wanted}
    free = {k: params[k].detach() for k in wanted}

    def example_loss(free_params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**free_params, **fixed, **buffers}, (x[None],))[0]
        return single_example_loss(loss_fn, out, y)

    def batch_loss(free_params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, {**free_params, **fixed, **buffers}, (x,))
        return per_example_losses(loss_fn, out, y).mean()

    if unit_size is None:
        fn, xs, ys = example_loss, inputs, targets
    else:
        n_batches = inputs.shape[0] // unit_size
        fn = batch_loss
        xs = inputs.reshape(n_batches, unit_size, *inputs.shape[1:])
        ys = targets.reshape(n_batches, unit_size, *targets.shape[1:])
    grads = vmap(grad(fn), in_dims=(None, 0, 0), randomness="different")(free, xs, ys)
    return {name: DenseBlock(grads[name].detach()) for name in wanted}
