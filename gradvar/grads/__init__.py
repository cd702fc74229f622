"""Per-sample gradients: per-layer rules over one batched backward, ``torch.func`` for the rest."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gradvar._data import chunk_rng
from gradvar.blocks import DenseBlock, GradBlock, OuterBlock
from gradvar.errors import InvalidArgumentError
from gradvar.grads._batchnorm import (
    POLICIES,
    batchnorm_modules,
    check_policy,
    frozen_batchnorm,
    population_stats,
)
from gradvar.grads._engine import DIRECT, VMAP, GradientEngine
from gradvar.grads._loss import LossFn, per_example_losses
from gradvar.grads.rules import Call, NotApplicable, Rule, register_rule, rule_for

__all__ = [
    "per_sample_grads",
    "GradientEngine",
    "VMAP",
    "DIRECT",
    "Rule",
    "Call",
    "NotApplicable",
    "register_rule",
    "rule_for",
    "GradBlock",
    "DenseBlock",
    "OuterBlock",
    "LossFn",
    "per_example_losses",
    "POLICIES",
    "batchnorm_modules",
    "check_policy",
    "frozen_batchnorm",
    "population_stats",
]


def per_sample_grads(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    params: Sequence[str] | None = None,
    chunk_size: int | None = None,
    rules: bool = True,
) -> dict[str, Tensor]:
    """Per-example gradients ``{parameter name: [n, *shape]}`` of ``loss_fn`` at ``model``.

    g_i = ∇_θ loss_fn(model(x_i[None]), y_i[None]): each example's loss is evaluated on its
    own, so the reduction of ``loss_fn`` (mean, sum) never matters. Buffers are passed
    through; the model's mode is used as it is (call ``model.eval()`` for frozen BatchNorm
    and no dropout). ``params`` selects parameters by name (default: all that require grad).
    ``chunk_size`` bounds peak memory by processing that many examples at a time.
    ``rules``: per-layer rules over one batched backward (default); False: ``vmap(grad)``
    for every parameter.
    """
    names = (
        list(params)
        if params is not None
        else [n for n, p in model.named_parameters() if p.requires_grad]
    )
    known = dict(model.named_parameters())
    unknown = [n for n in names if n not in known]
    if unknown:
        raise InvalidArgumentError(
            f"params names {unknown} are not parameters of the model; "
            f"valid names include {list(known)[:8]}"
        )
    n = inputs.shape[0]
    chunk = n if chunk_size is None else chunk_size
    if chunk <= 0:
        raise InvalidArgumentError(f"chunk_size must be positive, got chunk_size={chunk_size!r}")
    engine = GradientEngine(model, loss_fn, names, closed_form=rules)
    weights = {k: v.detach() for k, v in known.items()}
    buffers = dict(model.named_buffers())
    # One draw from the global generator seeds every chunk: chunks get independent dropout
    # masks (replaying one state per chunk would repeat them) and the call is reproducible.
    base = int(torch.randint(0, 2**40, ()).item())
    out: dict[str, Tensor] = {}
    for index, start in enumerate(range(0, n, chunk)):
        stop = min(start + chunk, n)
        blocks = engine.blocks(
            weights, buffers, inputs[start:stop], targets[start:stop], chunk_rng(base, index)
        )
        for name, block in blocks.items():
            rows = block.rows()
            if name not in out:  # preallocate: no torch.cat copy of the whole result
                out[name] = rows.new_empty((n, *rows.shape[1:]))
            out[name][start:stop] = rows
    return out
