"""``nn.GroupNorm``: x̂ normalised per example over each group of channels and all positions."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from gradvar.blocks import GradBlock
from gradvar.grads.rules._affine import channel_affine_blocks
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["GroupNormRule"]


class GroupNormRule(Rule):
    name = "group_norm"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        assert isinstance(module, nn.GroupNorm)
        x = call.args[0]
        if x.shape[0] != n or x.dim() < 2:
            raise NotApplicable(f"input shape {tuple(x.shape)} is not batched [n, C, ...]")
        xhat = F.group_norm(x, module.num_groups, eps=module.eps)
        return channel_affine_blocks(xhat, call.grad, module.affine, module.affine)


register_rule(nn.GroupNorm, GroupNormRule(), builtin=True)
