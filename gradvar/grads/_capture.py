"""Forward hooks that record every call of the hooked modules, and δ for each call's output.

δ comes from a tensor hook registered on the output at call time, so it is the gradient with
respect to the output *as the module returned it*, even when later code modifies it in place
(torchvision's ``out += identity``, ``ReLU(inplace=True)``): PyTorch gives hooks registered
before an in-place op the gradient of the pre-modification value. A rule with
``broadcast_batch`` (embeddings) may see its output of batch 1 replaced by a batch-sized
``expand`` view: the same values downstream, but a per-example δ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from gradvar.grads.rules import Call, Rule

__all__ = ["ModuleCapture"]


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, Tensor) else value


class ModuleCapture:
    """Records :class:`~gradvar.grads.rules.Call` s of ``modules`` (path → (module, rule))."""

    def __init__(self, modules: Mapping[str, tuple[nn.Module, Rule]], n: int) -> None:
        self.n = n
        self.calls: dict[str, list[Call]] = {path: [] for path in modules}
        self.frozen = False
        self._handles = [
            module.register_forward_hook(self._hook(path, rule), with_kwargs=True)
            for path, (module, rule) in modules.items()
        ]

    def _hook(self, path: str, rule: Rule):
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
            if not (isinstance(output, Tensor) and output.requires_grad):
                return None  # under no_grad, or no parameter of this call needs a gradient
            replaced = None
            if rule.broadcast_batch and output.dim() and output.shape[0] == 1 != self.n:
                # A lookup shared by the whole batch (GPT-2's position ids [1, T]): hand the
                # model a batch-sized view so that δ arrives per example.
                replaced = output.expand(self.n, *output.shape[1:])
                args = (args[0].expand(self.n, *args[0].shape[1:]), *args[1:])
                output = replaced
            call = Call(
                tuple(_detach(a) for a in args),
                {k: _detach(v) for k, v in kwargs.items()},
                output.detach(),
                extra=rule.capture(module),
                live=output,
                version=output._version,
            )
            self.calls[path].append(call)

            def grad_hook(grad: Tensor, call: Call = call) -> None:
                if not self.frozen:
                    call.grad = grad if call.grad is None else call.grad + grad

            output.register_hook(grad_hook)
            return replaced

        return hook

    def release(self) -> None:
        """After the backward: ignore further hook calls and drop the live outputs."""
        self.frozen = True
        for calls in self.calls.values():
            for call in calls:
                call.live = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> ModuleCapture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
