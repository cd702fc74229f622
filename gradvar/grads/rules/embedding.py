"""``nn.Embedding``: row v of G_i is Σ_{t: x_it = v} δ_it (zero at ``padding_idx``)."""

from __future__ import annotations

from torch import nn

from gradvar.blocks import GradBlock, SparseRowsBlock
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["EmbeddingRule"]


class EmbeddingRule(Rule):
    """Sparse rows per example; ``max_norm`` (renormalises the table in place) and
    ``scale_grad_by_freq`` (couples the examples of a batch) are left to vmap."""

    name = "embedding"
    params = ("weight",)
    broadcast_batch = True

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        tokens = call.args[0]
        if module.max_norm is not None or module.scale_grad_by_freq:
            raise NotApplicable("max_norm / scale_grad_by_freq")
        if tokens.dim() < 1 or tokens.shape[0] != n:
            raise NotApplicable(f"input shape {tuple(tokens.shape)} has no leading batch of {n}")
        block = SparseRowsBlock.from_tokens(
            tokens, call.grad, module.num_embeddings, module.padding_idx
        )
        return {"weight": block}


register_rule(nn.Embedding, EmbeddingRule(), builtin=True)
