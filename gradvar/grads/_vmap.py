"""Per-sample gradients of arbitrary parameters through ``torch.func`` (vmap of grad)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from gradvar.blocks import DenseBlock, GradBlock
from gradvar.grads._loss import LossFn, per_example_losses, single_example_loss

__all__ = ["vmap_blocks"]


@contextlib.contextmanager
def _batched_default_hx(model: nn.Module) -> Iterator[None]:
    """Give recurrent layers called without ``hx`` a zero state that is batched under vmap.

    ``nn.GRU/LSTM/RNN`` build their default zero state with ``torch.zeros``, which vmap sees as
    unbatched and then refuses to combine with the batched input; ``zeros + 0·x`` is the same
    zeros, batched like ``x``.
    """

    def pre_hook(module: nn.RNNBase, args: tuple, kwargs: dict):
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor) or (len(args) > 1 or kwargs.get("hx") is not None):
            return None
        layers = module.num_layers * (2 if module.bidirectional else 1)
        batch = (x.shape[0] if module.batch_first else x.shape[1]) if x.dim() == 3 else None
        lead = (layers, batch) if batch is not None else (layers,)
        tie = 0 * x.reshape(-1)[0]
        out_size = module.proj_size if getattr(module, "proj_size", 0) else module.hidden_size
        h0 = x.new_zeros(*lead, out_size) + tie
        hx = (h0, x.new_zeros(*lead, module.hidden_size) + tie) if module.mode == "LSTM" else h0
        return (args[0], hx) if args else args, (
            {k: v for k, v in kwargs.items() if k != "input"}
            | ({} if args else {"input": x, "hx": hx})
        )

    handles = [
        m.register_forward_pre_hook(pre_hook, with_kwargs=True)
        for m in model.modules()
        if isinstance(m, nn.RNNBase)
    ]
    # cuDNN's RNN reads its weights' storage, which functorch's wrapped tensors do not have.
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if handles else contextlib.nullcontext()
    try:
        with no_cudnn:
            yield
    finally:
        for handle in handles:
            handle.remove()


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
    with _batched_default_hx(model):
        grads = vmap(grad(fn), in_dims=(None, 0, 0), randomness="different")(free, xs, ys)
    return {name: DenseBlock(grads[name].detach()) for name in wanted}
