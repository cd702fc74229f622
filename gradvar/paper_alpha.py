"""The paper's α* logging protocol: per-coordinate α* from mini-batch gradients (METHOD.md §4, §9).

What the official code does (``engine.py``, ``--svrg_schedule optimal``): at every iteration it
computes the gradients of *all* N mini-batches of the epoch at the current weights θ and (cached
once per epoch) at the snapshot θ̃, in train mode with the training augmentation, and takes per
coordinate k, over those N mini-batch gradients g_i, h_i (1/N normalisation),

    α*_k = clamp(Cov_k(g, h) / (Var_k(h) + 1e-24), −2, 2);

at the first step after a snapshot it does not compute α* but sets it to 1 for every
coordinate. The figure value is the plain mean of α*_k over all coordinates, so a 0/0
coordinate (no variance at the snapshot: dead units, always-zero pixels) counts as 0. That
value is :attr:`MinibatchAlphaStar.mean_ref`; gradvar's own estimator
:attr:`MinibatchAlphaStar.mean` averages only the coordinates where α* is defined (the rule of
``gradvar.metrics``), so it is 1 at θ = θ̃ and is not pulled down by dead coordinates.

Exact per step costs N forward/backward passes per step (N² per epoch). gradvar's cheaper,
stated approximation (:func:`interval_indices`): recompute every ``every`` steps from ``count``
mini-batches evenly spaced over the interval's batches, and hold the value in between.
:func:`gradvar.train.train` runs it along any run (``alpha_log_every=``), and along SVRG with
the per-coordinate α* (``vr="svrg-optimal"``), the trajectory the paper's figures use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradvar._utils import check_positive, seeded
from gradvar.errors import InvalidArgumentError

__all__ = [
    "AlphaStarLog",
    "MinibatchAlphaStar",
    "interval_indices",
    "minibatch_alpha_star",
    "snapshot_by_name",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
_RELATIVE_VARIANCE_FLOOR = 1e-12  # as gradvar.metrics: Var ≤ 1e-12·E[h²] is 0 in float64


@dataclass(frozen=True)
class MinibatchAlphaStar:
    """Per-coordinate α* over n mini-batch gradient pairs, and both means over coordinates.

    ``alpha``: parameter name → clamped α*_k shaped like the parameter (float64).
    ``defined``: parameter name → bool mask of coordinates where α*_k is not 0/0:
    ``Var_k(h) > 1e-12·E[h_k²]`` and ``E[h_k²]`` above the rounding-noise level of the
    parameter's dtype relative to the tensor's largest (``(64 ε)²·max``).
    """

    alpha: dict[str, Tensor]
    defined: dict[str, Tensor]
    n: int

    @property
    def mean_ref(self) -> float:
        """The reference code's figure value: plain mean of α*_k over all coordinates."""
        total = sum(float(a.sum()) for a in self.alpha.values())
        return total / sum(a.numel() for a in self.alpha.values())

    @property
    def mean(self) -> float:
        """gradvar's ``alpha_star_mean``: mean of α*_k over the defined coordinates only."""
        count = sum(int(d.sum()) for d in self.defined.values())
        if count == 0:
            return float("nan")
        return (
            sum(float(a[d].sum()) for a, d in zip(self.alpha.values(), self.defined.values()))
            / count
        )

    @classmethod
    def at_snapshot(cls, params: Mapping[str, Tensor]) -> MinibatchAlphaStar:
        """The protocol's value at a snapshot step: α*_k = 1 for every coordinate."""
        ones = {
            n: torch.ones(p.shape, dtype=torch.float64, device=p.device) for n, p in params.items()
        }
        return cls(ones, {n: torch.ones_like(a, dtype=torch.bool) for n, a in ones.items()}, 0)


def interval_indices(num_batches: int, count: int) -> list[int]:
    """``count`` batch indices evenly spaced over ``range(num_batches)`` (all if count ≥ it)."""
    check_positive("num_batches", num_batches)
    check_positive("count", count)
    if count >= num_batches:
        return list(range(num_batches))
    return sorted({(i * num_batches) // count for i in range(count)})


def _grads(
    model: nn.Module, loss_fn: LossFn, x: Tensor, y: Tensor, params: list[Tensor]
) -> tuple[Tensor, ...]:
    loss = loss_fn(model(x), y)
    return torch.autograd.grad(loss, params, allow_unused=True)


def minibatch_alpha_star(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[tuple[Tensor, Tensor]],
    snapshot: Mapping[str, Tensor],
    *,
    seed: int = 0,
) -> MinibatchAlphaStar:
    """α*_k over the mini-batch gradients of ``batches`` at the model's weights θ and at θ̃.

    Each ``(inputs, targets)`` batch is run in train mode at θ and at ``snapshot`` (θ̃, by
    parameter name) under the same seeded RNG (seed ``seed + i`` for batch i), so dropout masks
    agree; the batches must already carry their augmentation. Gradients are the mean-reduced
    ``loss_fn`` gradients, as in training. Sums are float64. Afterwards the weights, buffers
    (BatchNorm statistics), train/eval mode and global RNGs are as they were, and no ``.grad``
    is touched.

    Per coordinate over the n batches (1/n normalisation): ``Cov = Σgh/n − ḡh̄``,
    ``Var(h) = Σh²/n − h̄²``, ``α* = clamp(Cov / (Var(h) + 1e-24), −2, 2)``.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, _ in named if n not in snapshot]
    if missing:
        raise InvalidArgumentError(
            f"snapshot lacks parameters {missing[:5]}; pass θ̃ as {{name: tensor}} for every "
            "trainable parameter (e.g. a state_dict of the snapshot weights)"
        )
    params = [p for _, p in named]
    snap = [snapshot[n].detach().to(device=p.device, dtype=p.dtype) for n, p in named]
    for (name, p), s in zip(named, snap):
        if s.shape != p.shape:
            raise InvalidArgumentError(
                f"snapshot[{name!r}] has shape {tuple(s.shape)}, the parameter {tuple(p.shape)}"
            )
    f64 = torch.float64
    sums = {
        k: [torch.zeros(p.shape, dtype=f64, device=p.device) for p in params]
        for k in ("g", "h", "h2", "gh")
    }
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    was_training = model.training
    current = [p.data for p in params]
    n = 0
    model.train()
    try:
        for i, (x, y) in enumerate(batches):
            with seeded(seed + i):
                g = _grads(model, loss_fn, x, y, params)
            for p, s in zip(params, snap):
                p.data = s
            try:
                with seeded(seed + i):
                    h = _grads(model, loss_fn, x, y, params)
            finally:
                for p, c in zip(params, current):
                    p.data = c
            for k, (gk, hk) in enumerate(zip(g, h)):
                gk = torch.zeros_like(params[k]) if gk is None else gk
                hk = torch.zeros_like(params[k]) if hk is None else hk
                gd, hd = gk.to(f64), hk.to(f64)
                sums["g"][k] += gd
                sums["h"][k] += hd
                sums["h2"][k] += hd * hd
                sums["gh"][k] += gd * hd
            n += 1
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
    if n == 0:
        raise InvalidArgumentError("minibatch_alpha_star got no batches; pass at least two")
    alpha: dict[str, Tensor] = {}
    defined: dict[str, Tensor] = {}
    for k, (name, p) in enumerate(named):
        mean_g, mean_h = sums["g"][k] / n, sums["h"][k] / n
        msq_h = sums["h2"][k] / n
        var_h = (msq_h - mean_h**2).clamp_min(0)
        cov = sums["gh"][k] / n - mean_g * mean_h
        alpha[name] = (cov / (var_h + 1e-24)).clamp(-2.0, 2.0)
        eps = torch.finfo(p.dtype).eps if p.dtype.is_floating_point else 0.0
        noise = (64 * eps) ** 2 * float(msq_h.max()) if msq_h.numel() else 0.0
        defined[name] = (var_h > _RELATIVE_VARIANCE_FLOOR * msq_h) & (msq_h > noise)
    return MinibatchAlphaStar(alpha, defined, n)


def snapshot_by_name(opt: torch.optim.Optimizer, model: nn.Module) -> dict[str, Tensor]:
    """θ̃ of an ``AlphaSVRG`` by parameter name (its param groups may reorder parameters)."""
    snapshot = getattr(opt, "snapshot", None)
    if snapshot is None:
        raise InvalidArgumentError(
            f"{type(opt).__name__} holds no snapshot: pass an AlphaSVRG after refresh_snapshot"
        )
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for group in opt.param_groups for p in group["params"]]
    return {names[id(p)]: s for p, s in zip(params, snapshot)}


class AlphaStarLog:
    """The protocol along a training run: α* = 1 at a snapshot, recomputed every ``every`` steps.

    A run without θ̃ of its own (plain SGD/AdamW) is measured against its weights at the start
    of each interval, which the log keeps (one copy of θ) when it sees the snapshot step.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, every: int, batches: int) -> None:
        check_positive("every", every)
        check_positive("batches", batches)
        self.model, self.loss_fn, self.every, self.batches = model, loss_fn, every, batches
        self.start_weights: dict[str, Tensor] | None = None

    def due(self, step: int, snapshot_step: int) -> bool:
        """Whether ``step`` (steps since the interval's start a multiple of ``every``) is logged."""
        return (step - snapshot_step) % self.every == 0

    def measure(
        self,
        step: int,
        snapshot_step: int,
        batches: Iterable[tuple[Tensor, Tensor]],
        *,
        snapshot: Mapping[str, Tensor] | None = None,
        seed: int = 0,
    ) -> MinibatchAlphaStar:
        """α* at the current weights (step ``step``) against ``snapshot`` or the kept start."""
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if step == snapshot_step:
            self.start_weights = {n: p.detach().clone() for n, p in params.items()}
            return MinibatchAlphaStar.at_snapshot(params)
        if snapshot is None:
            if self.start_weights is None:
                raise InvalidArgumentError(
                    f"α* at step {step} needs the weights of its interval's start "
                    f"(step {snapshot_step}), which this log did not see: measure that step "
                    "first, or pass snapshot="
                )
            snapshot = self.start_weights
        return minibatch_alpha_star(self.model, self.loss_fn, batches, snapshot, seed=seed)
