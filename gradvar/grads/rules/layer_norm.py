"""``nn.LayerNorm``: x̂ = (x − mean) / sqrt(var + eps) over the normalised trailing axes.

Also the "channels first" LayerNorm of ConvNeXt-style models (a LayerNorm subclass that
normalises the channel axis of ``[n, C, H, W]``, e.g. timm's ``LayerNorm2d``): when the input's
trailing axes are not the normalised shape but its channel axis is, x̂ is taken over that axis.
The first-chunk verification (see the engine) catches a subclass that does anything else.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from gradvar.blocks import GradBlock
from gradvar.grads.rules._affine import channel_affine_blocks, trailing_affine_blocks
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["LayerNormRule"]


class LayerNormRule(Rule):
    name = "layer_norm"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        assert isinstance(module, nn.LayerNorm)
        x = call.args[0]
        shape = tuple(module.normalized_shape)
        has_weight, has_bias = module.weight is not None, module.bias is not None
        if x.shape[0] != n or x.dim() <= len(shape):
            raise NotApplicable(f"input shape {tuple(x.shape)} has no leading batch of {n}")
        if tuple(x.shape[-len(shape) :]) == shape:
            xhat = F.layer_norm(x, shape, eps=module.eps)
            return trailing_affine_blocks(xhat, call.grad, shape, has_weight, has_bias)
        if len(shape) == 1 and x.dim() >= 3 and x.shape[1] == shape[0]:  # channels first
            xhat = F.layer_norm(x.movedim(1, -1), shape, eps=module.eps).movedim(-1, 1)
            return channel_affine_blocks(xhat, call.grad, has_weight, has_bias)
        raise NotApplicable(f"input shape {tuple(x.shape)} does not end in {shape}")


register_rule(nn.LayerNorm, LayerNormRule(), builtin=True)
