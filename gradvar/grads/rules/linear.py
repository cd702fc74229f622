"""``nn.Linear`` on any leading shape: G_i = Σ_t δ_it a_itᵀ, bias Σ_t δ_it (METHOD.md §8)."""

from __future__ import annotations

from torch import nn

from gradvar.blocks import DenseBlock, FactoredBlock, GradBlock
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["LinearRule"]


class LinearRule(Rule):
    """y = a Wᵀ + b over inputs ``[n, *positions, in]``: factored, never materialised for T = 1."""

    name = "linear"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        act, delta = call.args[0], call.grad
        if act.dim() < 2 or act.shape[0] != n or delta.shape[0] != n:
            raise NotApplicable(f"input shape {tuple(act.shape)} has no leading batch of {n}")
        right = act.reshape(n, -1, act.shape[-1])
        left = delta.reshape(n, -1, delta.shape[-1])
        out: dict[str, GradBlock] = {"weight": FactoredBlock(left, right)}
        if module.bias is not None:
            out["bias"] = DenseBlock(left.sum(1))
        return out


register_rule(nn.Linear, LinearRule(), builtin=True)
