"""BatchNorm and InstanceNorm affine parameters under the probe's BatchNorm policy.

With running statistics (BatchNorm always — the policy freezes it — and InstanceNorm with
``track_running_stats`` in eval mode): x̂ = (x − running_mean) / sqrt(running_var + eps) per
channel, the statistics being those the forward actually used (the policy's ``replace``
statistics included, captured at call time). InstanceNorm on its own statistics normalises
each example separately, so it couples no examples either.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gradvar.blocks import GradBlock
from gradvar.grads.rules._affine import channel_affine_blocks
from gradvar.grads.rules._base import Call, NotApplicable, Rule, register_rule

__all__ = ["BatchNormRule", "InstanceNormRule"]


class _RunningStatsCapture(Rule):
    def capture(self, module: nn.Module) -> dict[str, Any]:
        return {
            "running_mean": module.running_mean,
            "running_var": module.running_var,
            "training": module.training,
        }

    def _running_xhat(self, call: Call, eps: float) -> torch.Tensor:
        x = call.args[0]
        mean, var = call.extra["running_mean"], call.extra["running_var"]
        view = (1, -1) + (1,) * (x.dim() - 2)
        return (x - mean.reshape(view)) * torch.rsqrt(var.reshape(view) + eps)


class BatchNormRule(_RunningStatsCapture):
    name = "batch_norm"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        if call.extra["training"] or call.extra["running_mean"] is None:
            raise NotApplicable("BatchNorm on batch statistics couples the examples")
        xhat = self._running_xhat(call, module.eps)
        return channel_affine_blocks(xhat, call.grad, module.affine, module.affine)


class InstanceNormRule(_RunningStatsCapture):
    name = "instance_norm"

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        assert isinstance(module, nn.modules.instancenorm._InstanceNorm)
        x = call.args[0]
        if x.shape[0] != n:
            raise NotApplicable(f"input shape {tuple(x.shape)} has no leading batch of {n}")
        if call.extra["running_mean"] is not None and not call.extra["training"]:
            xhat = self._running_xhat(call, module.eps)
        else:
            xhat = F.instance_norm(x, eps=module.eps)
        return channel_affine_blocks(xhat, call.grad, module.affine, module.affine)


register_rule(nn.modules.batchnorm._BatchNorm, BatchNormRule(), builtin=True)
register_rule(nn.modules.instancenorm._InstanceNorm, InstanceNormRule(), builtin=True)
