"""``nn.Conv1d/2d/3d`` (any stride, padding, dilation, groups, padding mode).

Conv1d/2d with one group: a sum of outer products over output positions (δ at each position
times the input patch it saw, patches by ``F.unfold``), handled like a Linear on a sequence —
the sum by one GEMM, per-example slabs by one batched matmul. Otherwise (groups, 3-d),
per-example weight gradients come from one weight-gradient convolution in which the n
examples are extra groups: the input reshaped to ``[1, n·C, *S]`` and δ to ``[1, n·O, *S']``
with ``groups = n·g`` give ``[n·O, C/g, *k]`` — each example's gradient, by the backend's own
convolution kernels, without unfolding patches. It is recomputed one slab of output channels
(whole groups) at a time, so at most a slab of ``[n, O_slab, C/g, *k]`` exists at once.
The bias gradient is δ summed over positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradvar.blocks import DenseBlock, FactoredBlock, GradBlock, LazyBlock
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["ConvRule", "per_example_conv_weight_grad"]


def _explicit_padding(module: nn.modules.conv._ConvNd, x: Tensor) -> tuple[Tensor, list[int]]:
    """The input as the convolution sees it, and the padding left to the convolution."""
    dims = x.dim() - 2
    if module.padding_mode != "zeros":
        return F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode), [
            0
        ] * dims
    if module.padding == "valid":
        return x, [0] * dims
    if module.padding == "same":
        pads: list[int] = []
        for d, k in zip(reversed(module.dilation), reversed(module.kernel_size)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return F.pad(x, pads), [0] * dims
    return x, list(module.padding)


def conv_weight_grad(
    x: Tensor,
    delta: Tensor,
    weight_shape: torch.Size,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """The weight gradient Σ over the batch of a (padded-as-given) convolution."""
    weight = x.new_empty(()).expand(weight_shape)  # only its shape is read
    _, grad_weight, _ = torch.ops.aten.convolution_backward(
        delta, x, weight, None, stride, padding, dilation, False, [0] * len(stride), groups,
        [False, True, False],
    )  # fmt: skip
    return grad_weight


def per_example_conv_weight_grad(
    x: Tensor,
    delta: Tensor,
    weight_shape: torch.Size,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> Tensor:
    """``[n, O, C/g, *k]``: each example's weight gradient — the examples as extra groups."""
    n, o = delta.shape[0], delta.shape[1]
    xs = x.reshape(1, n * x.shape[1], *x.shape[2:])
    ds = delta.reshape(1, n * o, *delta.shape[2:])
    shape = torch.Size((n * o, *weight_shape[1:]))
    grad_weight = conv_weight_grad(xs, ds, shape, stride, padding, dilation, n * groups)
    return grad_weight.reshape(n, o, *weight_shape[1:])


class ConvRule(Rule):
    """Weight by grouped weight-gradient convolutions (slabs of whole groups), bias by sums."""

    name = "conv"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        assert isinstance(module, nn.modules.conv._ConvNd)
        if module.transposed:
            raise NotApplicable("transposed convolution")
        x, delta = call.args[0], call.grad
        if x.dim() != len(module.kernel_size) + 2 or x.shape[0] != n:
            raise NotApplicable(f"input shape {tuple(x.shape)} is not batched [n, C, ...]")
        x, padding = _explicit_padding(module, x)
        if module.groups == 1 and x.dim() in (3, 4):
            weight: GradBlock = _unfolded_block(module, x, delta, padding)
        else:
            weight = self._weight_block(module, x, delta, padding)
        out: dict[str, GradBlock] = {"weight": weight}
        if module.bias is not None:
            out["bias"] = DenseBlock(delta.reshape(n, delta.shape[1], -1).sum(2))
        return out

    def _weight_block(
        self, module: nn.modules.conv._ConvNd, x: Tensor, delta: Tensor, padding: list[int]
    ) -> GradBlock:
        shape = module.weight.shape
        groups = module.groups
        out_per_group, in_per_group = shape[0] // groups, x.shape[1] // groups
        stride, dilation = list(module.stride), list(module.dilation)

        def slab(lo: int, hi: int) -> Tensor:
            g_lo, g_hi = lo // out_per_group, -(-hi // out_per_group)
            xs = x[:, g_lo * in_per_group : g_hi * in_per_group]
            ds = delta[:, g_lo * out_per_group : g_hi * out_per_group]
            full = per_example_conv_weight_grad(
                xs,
                ds,
                torch.Size((ds.shape[1], *shape[1:])),
                stride,
                padding,
                dilation,
                g_hi - g_lo,
            )
            start = lo - g_lo * out_per_group
            return full[:, start : start + (hi - lo)]

        def total() -> Tensor:
            return conv_weight_grad(x, delta, shape, stride, padding, dilation, groups)

        def finite() -> Tensor:  # a float64 sum is finite iff every term is
            ok_x = torch.isfinite(x.reshape(x.shape[0], -1).sum(1, dtype=torch.float64))
            return ok_x & torch.isfinite(
                delta.reshape(delta.shape[0], -1).sum(1, dtype=torch.float64)
            )

        block = LazyBlock(
            shape,
            x.shape[0],
            x.device,
            slab,
            finite,
            lambda keep: self._weight_block(module, x[keep], delta[keep], padding),
            (x.numel() + delta.numel()) * x.element_size(),
            total,
        )
        block.align = out_per_group
        return block


def _unfolded_block(
    module: nn.modules.conv._ConvNd, x: Tensor, delta: Tensor, padding: list[int]
) -> FactoredBlock:
    """Conv1d/2d with one group as a sum of outer products over output positions:
    G_i = Σ_p δ_ip ⊗ patch_ip, patches by ``F.unfold`` (k_h·k_w times the input's size)."""
    n, o = delta.shape[0], delta.shape[1]
    if x.dim() == 3:  # Conv1d as a Conv2d of height 1
        x, delta = x[:, :, None], delta[:, :, None]
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        dilation, padding = (1, *module.dilation), [0, *padding]
    else:
        kernel, stride, dilation = module.kernel_size, module.stride, module.dilation
    left = delta.reshape(n, o, -1).transpose(1, 2)  # [n, positions, O]
    return FactoredBlock(left, _patches(x, kernel, stride, dilation, padding), module.weight.shape)


def _patches(x: Tensor, kernel, stride, dilation, padding) -> Tensor:
    """``[n, H'·W', C·k_h·k_w]``: each output position's input patch, in the weight's order.

    A strided view of the padded input copied once (``F.unfold`` on CUDA launches one kernel
    per example)."""
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])) if any(padding) else x
    n, c, h, w = xp.shape
    out_h = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    out_w = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    sn, sc, sh, sw = xp.stride()
    view = xp.as_strided(
        (n, out_h, out_w, c, kernel[0], kernel[1]),
        (sn, sh * stride[0], sw * stride[1], sc, sh * dilation[0], sw * dilation[1]),
    )
    return view.reshape(n, out_h * out_w, c * kernel[0] * kernel[1])


register_rule(nn.modules.conv._ConvNd, ConvRule(), builtin=True)
