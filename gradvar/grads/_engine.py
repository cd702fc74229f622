"""The gradient engine: per-sample gradient blocks of chosen parameters for one chunk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from gradvar._utils import RngState, capture_rng, replay_rng
from gradvar.blocks import GradBlock
from gradvar.grads._closed_form import LinearSlot, closed_form_blocks, find_linear_slots
from gradvar.grads._loss import LossFn
from gradvar.grads._vmap import vmap_blocks

__all__ = ["GradientEngine"]


class GradientEngine:
    """Computes per-sample gradient blocks of ``param_names`` for a chunk of data.

    Each ``nn.Linear`` on 2-D inputs is handled in closed form (factors δ, a; no per-example
    materialisation); every other parameter goes through ``vmap(grad)``. A Linear found
    ineligible at run time (sequence input, called twice) moves to vmap for good.

    ``unit_size``: None for per-example gradients, b for mini-batch gradients of b examples.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        param_names: Sequence[str],
        *,
        unit_size: int | None = None,
        closed_form: bool = True,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.param_names = list(param_names)
        self.unit_size = unit_size
        self.slots: list[LinearSlot] = (
            find_linear_slots(model, set(self.param_names)) if closed_form else []
        )

    @property
    def closed_form_params(self) -> list[str]:
        """Parameters currently handled in closed form."""
        names = [s.weight for s in self.slots] + [s.bias for s in self.slots if s.bias]
        return [n for n in self.param_names if n in names]

    def blocks(
        self,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor],
        inputs: Tensor,
        targets: Tensor,
        rng: RngState | None = None,
    ) -> dict[str, GradBlock]:
        """Blocks for every parameter in ``param_names``, with randomness replayed from ``rng``
        (default: the current global RNG state).

        Both passes (closed form and vmap) start from the same ``rng``, so they see the same
        dropout masks as each other and as any other weight set given the same ``rng``.
        """
        rng = capture_rng() if rng is None else rng
        out: dict[str, GradBlock] = {}
        if self.slots:
            with replay_rng(rng):
                closed, bad = closed_form_blocks(
                    self.model,
                    self.loss_fn,
                    params,
                    buffers,
                    self.slots,
                    inputs,
                    targets,
                    self.unit_size,
                )
            if bad:
                self.slots = [s for s in self.slots if s not in bad]
                closed = {k: v for k, v in closed.items() if k in self.closed_form_params}
            out.update(closed)
        rest = [n for n in self.param_names if n not in out]
        if not rest:
            return {name: out[name] for name in self.param_names}
        with replay_rng(rng):
            out.update(
                vmap_blocks(
                    self.model,
                    self.loss_fn,
                    params,
                    buffers,
                    rest,
                    inputs,
                    targets,
                    self.unit_size,
                )
            )
        return {name: out[name] for name in self.param_names}
