"""Snapshot mechanics: the snapshot pass (μ̃ and the optional per-batch cache) and the helpers
that leave a model exactly as it was around it (gradients, buffers, train/eval mode)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from gradvar.errors import InvalidArgumentError, MemoryBudgetError, NonFiniteGradientError
from gradvar.optim._correction import add_mean_grads_

__all__ = [
    "LossFn",
    "other_parameters",
    "take_grads",
    "grads_alias_buckets",
    "preserved_buffers",
    "check_cache_budget",
    "snapshot_pass",
]

LossFn = Callable[[Any, Any], Tensor]
"""``loss_fn(model(inputs), targets)`` → mean-reduced scalar loss."""

_GIB = 2**30


def other_parameters(model: nn.Module, params: Sequence[Tensor]) -> list[Tensor]:
    """The model's parameters that are not in ``params``; raise if ``params`` ⊄ the model."""
    ours = {id(p) for p in params}
    model_params = list(model.parameters())
    missing = len(ours - {id(p) for p in model_params})
    if missing:
        raise InvalidArgumentError(
            f"{missing} of the optimizer's {len(params)} parameters are not parameters of "
            f"model={type(model).__name__}: pass the model whose parameters the base optimizer "
            "updates (a DDP wrapper or the module itself)"
        )
    return [p for p in model_params if id(p) not in ours]


def take_grads(params: Sequence[Tensor], *, copy: bool = False) -> list[Tensor | None]:
    """Detach every ``.grad`` from ``params`` (leaving None) and return them (copies if asked)."""
    grads: list[Tensor | None] = []
    for p in params:
        grad = p.grad
        grads.append(grad.clone() if copy and grad is not None else grad)
        p.grad = None
    return grads


def grads_alias_buckets(model: nn.Module) -> bool:
    """True for DDP with ``gradient_as_bucket_view``: every backward writes into the same bucket
    memory, so a ``.grad`` kept across another backward must be copied."""
    return bool(getattr(model, "gradient_as_bucket_view", False))


@contextlib.contextmanager
def preserved_buffers(model: nn.Module) -> Iterator[None]:
    """Run the block, then put every buffer back (BatchNorm running statistics included)."""
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def check_cache_budget(num_batches: int, bytes_per_batch: int, max_cache_bytes: int) -> None:
    """Raise MemoryBudgetError when ``num_batches`` cached gradients exceed the budget."""
    need = num_batches * bytes_per_batch
    if need > max_cache_bytes:
        raise MemoryBudgetError(
            f"cache mode keeps one gradient per batch: {num_batches} batches × "
            f"{bytes_per_batch:,} bytes = {need / _GIB:.3f} GiB, over "
            f"max_cache_bytes={max_cache_bytes:,} ({max_cache_bytes / _GIB:.3f} GiB). Raise "
            "max_cache_bytes if the device has room, or use recompute mode "
            "(refresh_snapshot(..., cache=False) and `with opt.at_snapshot(model): ...`), "
            "which keeps no per-batch gradients"
        )


def _to(batch: Any, device: torch.device | str | None) -> Any:
    if device is None:
        return batch
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(b, device) for b in batch)
    return batch


def snapshot_pass(
    model: nn.Module,
    params: Sequence[Tensor],
    data: Iterable[Any],
    loss_fn: LossFn,
    *,
    cache: bool,
    max_cache_bytes: int,
    device: torch.device | str | None,
    loss_scale: float,
) -> tuple[list[Tensor], list[list[Tensor | None]] | None]:
    """μ̃ = mean over ``data``'s batches of the mean-reduced batch gradient of ``params``.

    Runs the model as it is (the caller sets train mode, the snapshot weights, and restores
    gradients, buffers and RNG). Returns μ̃ (in each parameter's dtype; summed in float32 for
    16-bit parameters) and, if ``cache``, every batch's gradient (None where a parameter got
    none). ``loss_scale`` multiplies each loss before backward and divides the gradients after.
    """
    bytes_per_batch = sum(p.numel() * p.element_size() for p in params)
    if cache and hasattr(data, "__len__"):
        check_cache_budget(len(data), bytes_per_batch, max_cache_bytes)  # before any work
    low_precision = (torch.float16, torch.bfloat16)
    sums = [
        torch.zeros_like(p, dtype=torch.float32 if p.dtype in low_precision else p.dtype)
        for p in params
    ]
    batch_grads: list[list[Tensor | None]] | None = [] if cache else None
    copy = cache and grads_alias_buckets(model)
    num_batches = 0
    for batch in data:
        inputs, targets = _to(batch, device)
        loss = loss_fn(model(inputs), targets)
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
        grads = take_grads(params, copy=copy)
        num_batches += 1
        present = [i for i, g in enumerate(grads) if g is not None]
        if loss_scale != 1.0:
            torch._foreach_mul_([grads[i] for i in present], 1.0 / loss_scale)
        add_mean_grads_([sums[i] for i in present], [grads[i] for i in present], 1.0)
        if batch_grads is not None:
            check_cache_budget(num_batches, bytes_per_batch, max_cache_bytes)
            batch_grads.append(grads)
    if num_batches == 0:
        raise InvalidArgumentError(
            "data yielded no batches: refresh_snapshot needs the snapshot interval's "
            "mini-batches, e.g. the training DataLoader"
        )
    mean = [(s / num_batches).to(p.dtype) for s, p in zip(sums, params)]
    for index, m in enumerate(mean):
        if not bool(torch.isfinite(m).all()):
            hint = f"lower loss_scale={loss_scale}" if loss_scale != 1.0 else "check the loss"
            raise NonFiniteGradientError(
                f"the mean gradient of parameter #{index} (shape {tuple(m.shape)}) is not finite "
                f"after {num_batches} snapshot batches: {hint}; θ̃ and μ̃ were not updated"
            )
    return mean, batch_grads
