"""``nn.RMSNorm``: x̂ = x / sqrt(mean(x²) + eps) over the normalised trailing axes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gradvar.blocks import GradBlock
from gradvar.grads.rules._affine import trailing_affine_blocks
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["RMSNormRule"]


class RMSNormRule(Rule):
    name = "rms_norm"
    params = ("weight",)

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        x = call.args[0]
        shape = tuple(module.normalized_shape)
        if x.shape[0] != n or x.dim() <= len(shape):
            raise NotApplicable(f"input shape {tuple(x.shape)} has no leading batch of {n}")
        eps = module.eps if module.eps is not None else torch.finfo(x.dtype).eps
        xhat = F.rms_norm(x, shape, eps=eps)
        return trailing_affine_blocks(xhat, call.grad, shape, True, False)


if hasattr(nn, "RMSNorm"):
    register_rule(nn.RMSNorm, RMSNormRule(), builtin=True)
