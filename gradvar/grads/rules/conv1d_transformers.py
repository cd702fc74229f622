"""transformers' ``Conv1D`` (GPT-2): y = a W + b with W ``[in, out]``; G_i = Σ_t a_it δ_itᵀ.

Matched by name and layout (class ``Conv1D`` with ``nf`` and a 2-D weight), so transformers
need not be installed.
"""

from __future__ import annotations

from torch import nn

from gradvar.blocks import DenseBlock, FactoredBlock, GradBlock
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["TransposedLinearRule", "is_transformers_conv1d"]


def is_transformers_conv1d(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (an affine map with weight [in, out])."""
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__ == "Conv1D"
        and hasattr(module, "nf")
        and weight is not None
        and weight.dim() == 2
        and weight.shape[1] == module.nf
    )


class TransposedLinearRule(Rule):
    """Affine map ``x @ W + b`` with W stored ``[in, out]``."""

    name = "conv1d-transformers"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        act, delta = call.args[0], call.grad
        if act.dim() < 2 or act.shape[0] != n:
            raise NotApplicable(f"input shape {tuple(act.shape)} has no leading batch of {n}")
        left = act.reshape(n, -1, act.shape[-1])
        right = delta.reshape(n, -1, delta.shape[-1])
        out: dict[str, GradBlock] = {"weight": FactoredBlock(left, right)}
        if getattr(module, "bias", None) is not None:
            out["bias"] = DenseBlock(right.sum(1))
        return out


register_rule(is_transformers_conv1d, TransposedLinearRule(), builtin=True)
