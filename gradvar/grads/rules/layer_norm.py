"""``nn.LayerNorm``: x̂ = (x − mean) / sqrt(var + eps) over the normalised trailing axes."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from gradvar.blocks import GradBlock
from gradvar.grads.rules._affine import trailing_affine_blocks
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["LayerNormRule"]


class LayerNormRule(Rule):
    name = "layer_norm"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        assert isinstance(module, nn.LayerNorm)
        x = call.args[0]
        shape = tuple(module.normalized_shape)
        if x.shape[0] != n or x.dim() <= len(shape):
            raise NotApplicable(f"input shape {tuple(x.shape)} has no leading batch of {n}")
        xhat = F.layer_norm(x, shape, eps=module.eps)
        return trailing_affine_blocks(
            xhat, call.grad, shape, module.weight is not None, module.bias is not None
        )


register_rule(nn.LayerNorm, LayerNormRule(), builtin=True)
