"""BatchNorm policies for per-sample gradients.

In train mode BatchNorm couples the examples of a batch, so per-example gradients are not
defined. gradvar never decides silently; the policy is explicit and recorded:

- ``"eval"`` (default): BatchNorm uses its running statistics (the layer is put in eval
  mode for the probe, everything else — dropout — keeps the model's mode);
- ``"replace"``: the running statistics are replaced, for the probe only, by the exact
  population statistics (mean, biased variance) of the probed data under each weight set
  (one extra no-grad forward pass per BatchNorm layer and weight set), then used as in
  ``"eval"``; the model's own buffers are not touched;
- ``"refuse"``: a model containing BatchNorm raises :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradvar.errors import InvalidArgumentError, UnsupportedModelError

__all__ = ["POLICIES", "batchnorm_modules", "check_policy", "frozen_batchnorm", "population_stats"]

POLICIES = ("eval", "replace", "refuse")


def batchnorm_modules(model: nn.Module) -> dict[str, nn.modules.batchnorm._NormBase]:
    """Layers under the BatchNorm policy, by module path: every BatchNorm, and InstanceNorm
    with ``track_running_stats`` (whose train mode would update its running statistics)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        or (isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats)
    }


def check_policy(model: nn.Module, policy: str) -> None:
    """Validate ``policy`` and apply ``"refuse"``."""
    if policy not in POLICIES:
        raise InvalidArgumentError(f"batchnorm must be one of {POLICIES}, got batchnorm={policy!r}")
    found = batchnorm_modules(model)
    no_stats = [n for n, m in found.items() if m.running_mean is None]
    if no_stats:
        raise UnsupportedModelError(
            f"BatchNorm layers {sorted(no_stats)} keep no running statistics "
            "(track_running_stats=False), so they normalise by each batch's own statistics "
            "and couple its examples: per-example gradients are not defined. Build them with "
            "track_running_stats=True, or use GroupNorm/LayerNorm."
        )
    if policy == "refuse" and found:
        raise UnsupportedModelError(
            f"model has BatchNorm layers {sorted(found)} and batchnorm='refuse'; per-example "
            "gradients of BatchNorm in train mode are not defined. Use batchnorm='eval' "
            "(running statistics) or batchnorm='replace' (statistics of the probed data)."
        )


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """Put every BatchNorm layer in eval mode inside the block; restore the modes after."""
    layers = batchnorm_modules(model)
    modes = {name: m.training for name, m in layers.items()}
    for m in layers.values():
        m.eval()
    try:
        yield
    finally:
        for name, m in layers.items():
            m.train(modes[name])


@torch.no_grad()
def population_stats(
    model: nn.Module,
    params: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor],
    batches: Iterable[Tensor],
) -> dict[str, Tensor]:
    """Buffers whose BatchNorm running mean/var are the exact statistics of ``batches``.

    For each BatchNorm layer in forward order, one no-grad eval-mode pass accumulates the
    per-channel Σx and Σx² of its input (earlier layers already use their replaced
    statistics), giving the population mean and the biased variance — what train-mode
    normalisation over all of the data would use. ``batches`` must be re-iterable.
    """
    layers = batchnorm_modules(model)
    work = {k: v.clone() for k, v in buffers.items()}
    batches = list(batches)
    for name, module in layers.items():
        prefix = f"{name}." if name else ""
        total = {"n": 0.0, "s": 0.0, "s2": 0.0}

        def hook(_m: nn.Module, args: tuple[Tensor, ...], total=total) -> None:
            x = args[0].to(torch.float64).transpose(0, 1).reshape(args[0].shape[1], -1)
            total["n"] += x.shape[1]
            total["s"] = total["s"] + x.sum(1)
            total["s2"] = total["s2"] + (x * x).sum(1)

        handle = module.register_forward_pre_hook(hook)
        was = module.training
        module.eval()
        try:
            for inputs in batches:
                functional_call(model, {**params, **work}, (inputs,))
        finally:
            handle.remove()
            module.train(was)
        if total["n"] == 0:
            continue
        mean = total["s"] / total["n"]
        var = (total["s2"] / total["n"] - mean**2).clamp_min(0)
        work[f"{prefix}running_mean"] = mean.to(work[f"{prefix}running_mean"].dtype)
        work[f"{prefix}running_var"] = var.to(work[f"{prefix}running_var"].dtype)
    return work
