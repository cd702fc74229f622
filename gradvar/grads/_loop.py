"""The last resort: per-sample gradients by a loop of ordinary backward passes.

For models that ``vmap`` cannot trace per example — data-dependent shapes such as packing
variable-length sequences (``pack_padded_sequence`` needs concrete lengths), ``.item()`` in the
forward — each sample (one example, or one mini-batch of b) runs its own forward and backward.
Exact, and as slow as it sounds: it is used only for the parameters that need it, and the
route says so. Dropout masks are drawn per sample, not as one batched draw.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradvar.blocks import DenseBlock, GradBlock
from gradvar.grads._loss import LossFn, per_example_losses

__all__ = ["loop_blocks"]


def loop_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    wanted: list[str],
    inputs: Tensor,
    targets: Tensor,
    unit_size: int | None,
) -> dict[str, GradBlock]:
    """Blocks of the per-sample gradients of ``wanted``: g_s = ∇ mean_{i∈s} f_i, a backward each."""
    size = unit_size or 1
    leaves = {k: v.detach().requires_grad_(k in wanted) for k, v in params.items()}
    rows: dict[str, list[Tensor]] = {k: [] for k in wanted}
    for start in range(0, inputs.shape[0] - inputs.shape[0] % size, size):
        x, y = inputs[start : start + size], targets[start : start + size]
        out = functional_call(model, {**leaves, **buffers}, (x,))
        loss = per_example_losses(loss_fn, out, y).mean()
        grads = torch.autograd.grad(loss, [leaves[k] for k in wanted], allow_unused=True)
        for name, g in zip(wanted, grads):
            rows[name].append(torch.zeros_like(leaves[name]) if g is None else g)
    return {name: DenseBlock(torch.stack(rows[name])) for name in wanted}
