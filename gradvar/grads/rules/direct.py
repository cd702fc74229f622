"""Parameters used directly in a broadcasting op rather than through a module with a rule.

A ViT's ``cls_token`` (``cls_token.expand(n, -1, -1)``), its ``pos_embed`` (``x + pos_embed``),
a layer scale (``x * gamma``) or a hand-written bias: for an op whose output has the batch on
its first axis and where the parameter is broadcast along it,

    add / sub / expand:  g_i = ± reduce(δ_i),     mul:  g_i = reduce(δ_i ⊙ other_i),

``reduce`` summing over the axes the parameter is broadcast along. :class:`DirectUses` hands
the forward *watched* leaves (a Tensor subclass whose ``__torch_function__`` sees only the
ops that involve that parameter, so the rest of the forward runs at full speed) and records
each such use; any other use of a watched parameter marks it unsupported, and it goes through
vmap instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradvar.blocks import DenseBlock

__all__ = ["DirectUses", "DirectUse"]

_ADD = {torch.add, Tensor.add, Tensor.__add__, Tensor.__radd__}
_SUB = {torch.sub, Tensor.sub, Tensor.__sub__}
_RSUB = {Tensor.__rsub__}
_MUL = {torch.mul, Tensor.mul, Tensor.__mul__, Tensor.__rmul__}
_EXPAND = {Tensor.expand, Tensor.expand_as}


@dataclass
class DirectUse:
    """One broadcasting use: output gradient δ (set by a tensor hook), sign or multiplier."""

    param_shape: torch.Size
    sign: float
    other: Tensor | None  # the multiplier of a mul, else None
    out_shape: torch.Size
    grad: Tensor | None = None
    live: Tensor | None = None  # the op's output, to differentiate with respect to
    version: int = 0

    @property
    def modified_in_place(self) -> bool:
        return self.live is not None and self.live._version != self.version

    def block(self, n: int) -> DenseBlock | None:
        """g_i of this use, or None when the output is not batched along its first axis."""
        if self.grad is None:
            return None
        if len(self.out_shape) == 0 or self.out_shape[0] != n:
            return None
        padded = (1,) * (len(self.out_shape) - len(self.param_shape)) + tuple(self.param_shape)
        if len(padded) != len(self.out_shape) or padded[0] != 1:
            return None
        values = self.grad if self.other is None else self.grad * self.other
        values = values.expand(self.out_shape)
        axes = [d for d in range(1, len(padded)) if padded[d] == 1 and self.out_shape[d] != 1]
        if axes:
            values = values.sum(axes, keepdim=True)
        return DenseBlock((self.sign * values).reshape(n, *self.param_shape))


def _carries_grad(out: Any) -> bool:
    return any(
        isinstance(t, Tensor) and t.requires_grad for t in torch.utils._pytree.tree_leaves(out)
    )


class _Watched(Tensor):
    """A parameter leaf that reports every op it takes part in to its :class:`DirectUses`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)  # plain tensors out: the watch does not spread
        for a in (*args, *kwargs.values()):
            recorder = getattr(a, "_gradvar_uses", None) if isinstance(a, _Watched) else None
            if recorder is not None:
                recorder.observe(func, args, kwargs, out)
                break
        return out


class DirectUses:
    """Records broadcasting uses of parameters during a forward pass: pass the forward
    :attr:`leaves` (watched copies of ``params``) in place of the parameters."""

    def __init__(self, params: Mapping[str, Tensor]) -> None:
        self.leaves: dict[str, Tensor] = {}
        for name, p in params.items():
            leaf = torch.Tensor._make_subclass(_Watched, p.detach(), True)
            leaf._gradvar_uses = self
            self.leaves[name] = leaf
        self._names = {id(t): name for name, t in self.leaves.items()}
        self.uses: dict[str, list[DirectUse]] = {name: [] for name in params}
        self.unsupported: dict[str, str] = {}
        self.frozen = False

    def observe(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Record one op that involved a watched leaf."""
        hits = [
            (i, a)
            for i, a in enumerate(list(args) + list(kwargs.values()))
            if isinstance(a, Tensor) and id(a) in self._names
        ]
        if not hits or not _carries_grad(out):
            return  # metadata (.shape, .dtype) or a use no gradient flows through
        names = {self._names[id(a)] for _, a in hits}
        use = (
            None
            if len(hits) != 1 or kwargs.get("alpha") is not None
            else self._use(func, args, hits[0][0], out)
        )
        for name in names:
            if use is None:
                self.unsupported.setdefault(name, getattr(func, "__name__", str(func)))
            else:
                self.uses[name].append(use)

    def release(self) -> None:
        """After the backward: ignore further hook calls and drop the live outputs."""
        self.frozen = True
        for uses in self.uses.values():
            for use in uses:
                use.live = None

    def _use(self, func: Any, args: tuple, position: int, out: Any) -> DirectUse | None:
        if not isinstance(out, Tensor) or not out.requires_grad or position > 1:
            return None
        param = args[position]
        other = args[1 - position] if len(args) > 1 and func not in _EXPAND else None
        if func in _EXPAND:
            use = DirectUse(param.shape, 1.0, None, out.shape)
        elif func in _ADD:
            use = DirectUse(param.shape, 1.0, None, out.shape)
        elif func in _SUB:
            use = DirectUse(param.shape, 1.0 if position == 0 else -1.0, None, out.shape)
        elif func in _RSUB:
            use = DirectUse(param.shape, -1.0 if position == 0 else 1.0, None, out.shape)
        elif func in _MUL:
            if isinstance(other, Tensor):
                other = other.detach()
            elif isinstance(other, (int, float)):
                other = torch.tensor(float(other), dtype=param.dtype, device=param.device)
            else:
                return None
            use = DirectUse(param.shape, 1.0, other, out.shape)
        else:
            return None

        def hook(grad: Tensor, use: DirectUse = use) -> None:
            if not self.frozen:
                use.grad = grad if use.grad is None else use.grad + grad

        out.register_hook(hook)
        use.live, use.version = out, out._version
        return use
