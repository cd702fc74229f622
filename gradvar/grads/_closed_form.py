"""Closed-form per-example gradients of ``nn.Linear`` on 2-D inputs (METHOD.md §8).

One ordinary batched forward and backward of the *summed* per-example loss gives, for every
eligible Linear, its input ``a`` ([n, in]) and the gradient ``δ`` of the summed loss w.r.t.
its output ([n, out]). Because example i's loss depends only on example i's output (no
cross-example coupling; BatchNorm is frozen by policy), δ_i = ∂f_i/∂z_i, so the per-example
weight gradient is δ_i a_iᵀ and the bias gradient is δ_i — without materialising either.

A Linear is eligible when its input is 2-D and it is called exactly once per forward
(weight sharing makes the per-example gradient a sum of outer products, not one).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradvar.blocks import DenseBlock, GradBlock, OuterBlock
from gradvar.grads._loss import LossFn, per_example_losses

__all__ = ["LinearSlot", "find_linear_slots", "closed_form_blocks"]


@dataclass(frozen=True)
class LinearSlot:
    """An ``nn.Linear`` handled in closed form: its module path and parameter names."""

    module: str
    weight: str
    bias: str | None


def find_linear_slots(model: nn.Module, selected: set[str]) -> list[LinearSlot]:
    """Every ``nn.Linear`` (exact type or subclass) whose weight is among ``selected``."""
    slots = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        prefix = f"{name}." if name else ""
        weight = f"{prefix}weight"
        bias = f"{prefix}bias" if module.bias is not None else None
        if weight in selected:
            slots.append(LinearSlot(name, weight, bias if bias in selected else None))
    return slots


class _Capture:
    """Forward hooks recording each slot's input and output (and how often it ran)."""

    def __init__(self, model: nn.Module, slots: list[LinearSlot]) -> None:
        self.inputs: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {s.module: 0 for s in slots}
        modules = dict(model.named_modules())
        self._handles = [
            modules[s.module].register_forward_hook(self._hook(s.module)) for s in slots
        ]

    def _hook(self, name: str):
        def hook(_module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            self.calls[name] += 1
            self.inputs[name] = args[0].detach()
            self.outputs[name] = output

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def closed_form_blocks(
    model: nn.Module,
    loss_fn: LossFn,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    slots: list[LinearSlot],
    inputs: Tensor,
    targets: Tensor,
    unit_size: int | None,
) -> tuple[dict[str, GradBlock], list[LinearSlot]]:
    """Blocks for the slots' weights and biases, and the slots that turned out ineligible.

    ``unit_size`` None gives per-example blocks; b gives mini-batch gradients of consecutive
    groups of b examples, G_B = (1/b) Σ_{i∈B} δ_i a_iᵀ, formed with one batched matmul.
    """
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    capture = _Capture(model, slots)
    try:
        outputs = functional_call(model, {**leaves, **buffers}, (inputs,))
    finally:
        capture.remove()
    losses = per_example_losses(loss_fn, outputs, targets)
    good = [
        s for s in slots if capture.calls[s.module] == 1 and capture.inputs[s.module].dim() == 2
    ]
    bad = [s for s in slots if s not in good]
    if not good:
        return {}, bad
    deltas = torch.autograd.grad(losses.sum(), [capture.outputs[s.module] for s in good])
    blocks: dict[str, GradBlock] = {}
    for slot, delta in zip(good, deltas):
        act = capture.inputs[slot.module]
        if unit_size is None:
            blocks[slot.weight] = OuterBlock(delta, act)
            if slot.bias is not None:
                blocks[slot.bias] = DenseBlock(delta)
        else:
            n_batches = delta.shape[0] // unit_size
            d = delta.reshape(n_batches, unit_size, -1)
            a = act.reshape(n_batches, unit_size, -1)
            blocks[slot.weight] = DenseBlock(torch.bmm(d.transpose(1, 2), a) / unit_size)
            if slot.bias is not None:
                blocks[slot.bias] = DenseBlock(d.mean(1))
    return blocks, bad
