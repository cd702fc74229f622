"""``AlphaSVRG``: alpha-SVRG (Yin et al., ICLR 2025) as a ``torch.optim.Optimizer`` wrapper.

The update replaces the mini-batch gradient ``g`` by ``v = g − α_t (h − μ̃)`` and lets the
unchanged base optimizer step on ``v`` (METHOD.md §2). ``h`` is the same mini-batch's gradient at
the snapshot weights θ̃ (same dropout masks), ``μ̃`` the mean gradient at θ̃ over one pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gradvar._utils import RngState, capture_rng, check_positive, replay_rng
from gradvar.errors import InvalidArgumentError, OptimizerStateError
from gradvar.optim import _alpha
from gradvar.optim._alpha import AlphaArg, AlphaBucket
from gradvar.optim._correction import add_mean_grads_, fold_snapshot_grads_
from gradvar.optim._measured import MeasuredAlpha
from gradvar.optim._snapshot import (
    LossFn,
    grads_alias_buckets,
    other_parameters,
    preserved_buffers,
    snapshot_pass,
    take_grads,
)
from gradvar.schedules import Schedule, as_schedule, from_dict

__all__ = ["AlphaSVRG"]

_STATE_KEY = "alpha_svrg"
_SHARED_HOOKS = (
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


class AlphaSVRG(torch.optim.Optimizer):
    """alpha-SVRG around any base optimizer: the base steps on ``v = g − α_t (h − μ̃)``.

    The wrapper *is* the base optimizer as far as torch is concerned: it shares its
    ``param_groups``, ``state`` and ``defaults``, so LR schedulers, ``GradScaler``,
    ``zero_grad``, hooks and checkpoints see one optimizer. ``α_t = 0`` skips the correction
    entirely (bit for bit the base optimizer); ``α_t = 1`` is standard SVRG.

    Training loop (recompute mode; ``h`` costs one extra forward/backward per step)::

        opt = AlphaSVRG(torch.optim.SGD(model.parameters(), lr=0.1),
                        alpha=Linear(0.75, total_steps, hold=len(loader)),
                        snapshot_interval=len(loader))
        for epoch in range(epochs):
            opt.refresh_snapshot(model, loader, loss_fn)       # θ̃ ← θ, μ̃ over the batches
            for x, y in loader:
                opt.zero_grad()                                # also records the RNG state
                loss_fn(model(x), y).backward()                # g
                with opt.at_snapshot(model):                   # θ̃, same dropout masks
                    loss_fn(model(x), y).backward()            # h, folded: .grad = g − α h
                opt.step()                                     # .grad += α μ̃; base step

    ``zero_grad()`` records the RNG state that ``at_snapshot`` replays, so call it after the
    batch is loaded and right before its forward (random augmentation in the main process draws
    from the same RNGs), or call :meth:`mark_batch` there.

    Cache mode: ``refresh_snapshot(..., cache=True)`` keeps every batch gradient ``h_i`` of the
    snapshot pass and training batch ``i`` calls ``opt.use_cached(i)`` instead of
    ``at_snapshot``. This requires training batch ``i`` to be bit-identical to snapshot batch
    ``i`` (data, augmentation, dropout). ``refresh_snapshot`` leaves the global RNGs as it found
    them, so iterating the same DataLoader right after it replays the same order and draws;
    a loader with its own ``generator`` must be re-seeded by the caller before both passes.

    Gradient clipping: ``step()`` applies the correction, so a ``clip_grad_norm_`` called before
    ``step()`` would clip ``g``, not ``v``. Call ``opt.apply_correction()`` first (after
    ``scaler.unscale_(opt)`` under a GradScaler); ``step()`` then does not apply it again.

    GradScaler: scale both backwards (``scaler.scale(loss).backward()`` inside ``at_snapshot``
    too). ``h`` is folded into ``.grad`` under the same scale as ``g``, so ``unscale_`` unscales
    (and inf-checks) ``g − α h`` at once; the unscaled ``μ̃`` is added after unscaling.

    Gradient accumulation: divide each micro-batch loss by the number of micro-batches (so
    ``.grad`` is a mean, like ``μ̃``'s terms) and call ``opt.mark_batch()`` before each
    micro-batch's forward; each ``at_snapshot`` folds that micro-batch's ``h``.

    Args:
        base: the optimizer that steps (SGD, AdamW, ...); its state is shared, not copied.
        alpha: ``α_t``: a number, a :class:`~gradvar.schedules.Schedule` (evaluated at the
            optimizer's step count), a dict from ``Schedule.to_dict()``, or a list with one of
            these per param group. ``PerLayer`` schedules are keyed by parameter name.
            ``"measured"`` (or a :class:`~gradvar.schedules.Measured`): the optimizer
            measures a per-layer α*_L from the (g, h) pairs of the current snapshot interval
            and uses it (see :attr:`alpha_log`); one ``at_snapshot`` per step (with gradient
            accumulation, or under a GradScaler, use cache mode).
        snapshot_interval: steps between snapshots. When given, :attr:`snapshot_due` says when
            to call :meth:`refresh_snapshot` and a step with a snapshot this old is an error.
        named_parameters: ``model.named_parameters()`` (or a dict), naming parameters for
            ``PerLayer`` alpha; by default the names the base optimizer was built with.
    """

    def __init__(
        self,
        base: torch.optim.Optimizer,
        alpha: AlphaArg = 0.75,
        *,
        snapshot_interval: int | None = None,
        named_parameters: Mapping[str, Tensor] | Iterable[tuple[str, Tensor]] | None = None,
    ) -> None:
        if not isinstance(base, torch.optim.Optimizer) or isinstance(base, AlphaSVRG):
            raise InvalidArgumentError(
                f"base must be a torch.optim.Optimizer instance such as "
                f"torch.optim.SGD(model.parameters(), lr=0.1), got base={base!r}"
            )
        if snapshot_interval is not None:
            check_positive("snapshot_interval", snapshot_interval)
        # Optimizer.__setstate__ is torch's own way to rebuild an optimizer around existing
        # param_groups/state (unpickling): it creates the hook registries and wraps step() for
        # hooks and profiling, without copying or re-validating the groups we share.
        super().__setstate__(
            {"defaults": base.defaults, "state": base.state, "param_groups": base.param_groups}
        )
        for name in _SHARED_HOOKS:  # state_dict() delegates to base, so hooks live there
            setattr(self, name, getattr(base, name))
        self.base = base
        self.snapshot_interval = snapshot_interval
        self._default_alpha = None if isinstance(alpha, (list, tuple)) else alpha
        self._schedules = _alpha.group_schedules(alpha, len(base.param_groups))
        self._names = _alpha.param_names(named_parameters, base.param_groups)
        self._buckets = _alpha.buckets(self.param_groups, self._schedules, self._names)
        self._step_count = 0
        self._snapshot_step: int | None = None
        self._snapshot: list[Tensor] | None = None
        self._mean_grad: list[Tensor] | None = None
        self._cache: list[list[Tensor | None]] | None = None
        self._batch_rng: RngState | None = None
        self._coordinate_alpha: list[Tensor | None] | None = None
        self._measured = self._new_measured()
        self._reset_step()

    # ------------------------------------------------------------------ read-only state

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The alpha schedule of each param group."""
        return tuple(self._schedules)

    @property
    def step_count(self) -> int:
        """Optimizer steps taken (steps skipped by a GradScaler do not count)."""
        return self._step_count

    @property
    def snapshot_step(self) -> int | None:
        """The step count at the last :meth:`refresh_snapshot` (None before the first)."""
        return self._snapshot_step

    @property
    def snapshot_due(self) -> bool:
        """True when there is no snapshot or it is ``snapshot_interval`` steps old."""
        if self._snapshot_step is None:
            return True
        interval = self.snapshot_interval
        return interval is not None and self._step_count - self._snapshot_step >= interval

    @property
    def snapshot(self) -> tuple[Tensor, ...] | None:
        """θ̃, one tensor per parameter in param-group order (None before the first snapshot)."""
        return None if self._snapshot is None else tuple(self._snapshot)

    @property
    def mean_grad(self) -> tuple[Tensor, ...] | None:
        """μ̃, one tensor per parameter in param-group order (None before the first snapshot)."""
        return None if self._mean_grad is None else tuple(self._mean_grad)

    @property
    def num_cached(self) -> int:
        """Number of batch gradients held by cache mode (0 in recompute mode)."""
        return 0 if self._cache is None else len(self._cache)

    @property
    def measured_layers(self) -> tuple[str, ...]:
        """The layers whose alpha is measured (empty unless an alpha is ``Measured``)."""
        return () if self._measured is None else self._measured.layers

    def alpha_log(self, *, clear: bool = False) -> list[dict[str, Any]]:
        """The measured alphas used so far: one row per (step, measured layer) with ``step``
        (the step count the update was taken at, as a schedule is evaluated), ``snapshot_step``,
        ``layer``, ``alpha`` and ``pairs`` (the number of pairs behind it). ``clear`` empties
        the log (e.g. after writing it to records); it is not part of :meth:`state_dict`."""
        return [] if self._measured is None else self._measured.log(clear=clear)

    def current_alpha(self) -> list[float]:
        """``α_t`` of every parameter (param-group order) at the current step."""
        values = [0.0] * sum(len(b.indices) for b in self._buckets)
        for value, bucket in self._alphas():
            for i in bucket.indices:
                values[i] = value
        return values

    # ------------------------------------------------------------------ snapshot

    def refresh_snapshot(
        self,
        model: nn.Module,
        data: Iterable[Any],
        loss_fn: LossFn,
        *,
        cache: bool = False,
        max_cache_bytes: int = 4 * 2**30,
        device: torch.device | str | None = None,
        loss_scale: float = 1.0,
    ) -> None:
        """θ̃ ← the current weights; μ̃ ← mean of the mean-reduced batch gradients over ``data``.

        Every ``(inputs, targets)`` batch of ``data`` is run once, in train mode, as
        ``loss_fn(model(inputs), targets).backward()``. Afterwards the model's gradients,
        buffers (BatchNorm running statistics), train/eval mode and the global RNGs are as they
        were. Under DDP every rank must pass the same number of batches; the gradients are
        averaged over ranks as in training.

        Args:
            cache: keep every batch gradient for :meth:`use_cached` (memory: batches × |θ|).
            max_cache_bytes: cache budget; MemoryBudgetError (with the estimate) above it.
            device: move tensors of each batch there first (e.g. the model's device).
            loss_scale: multiply each loss by this before backward and divide the gradients by
                it after (fp16 autocast: pass ``scaler.get_scale()`` to avoid underflow).
        """
        if self._folded or self._cached_indices:
            raise OptimizerStateError(
                "refresh_snapshot was called after this step's h was computed and before "
                "step(): refresh the snapshot before the batch's forward (or call zero_grad())"
            )
        check_positive("loss_scale", loss_scale)
        check_positive("max_cache_bytes", max_cache_bytes)
        params = self._params()
        others = other_parameters(model, params)
        self._cache = None  # never hold the old cache and the new one at once
        copy = grads_alias_buckets(model)
        grads = take_grads(params, copy=copy)
        other_grads = take_grads(others, copy=copy)
        was_training = model.training
        try:
            with replay_rng(capture_rng()), preserved_buffers(model):
                model.train()
                mean, batch_grads = snapshot_pass(
                    model,
                    params,
                    data,
                    loss_fn,
                    cache=cache,
                    max_cache_bytes=max_cache_bytes,
                    device=device,
                    loss_scale=loss_scale,
                )
        finally:
            model.train(was_training)
            for p, grad in zip([*params, *others], [*grads, *other_grads]):
                p.grad = grad
        self._snapshot = None  # free the old θ̃ before copying the new one
        with torch.no_grad():
            self._snapshot = [p.detach().clone() for p in params]
        self._mean_grad = mean
        self._cache = batch_grads
        self._snapshot_step = self._step_count
        if self._measured is not None:
            self._measured.reset()

    def mark_batch(self) -> None:
        """Record the global RNG state that the current batch's forward starts from.

        :meth:`zero_grad` does this; call it yourself right before each micro-batch's forward
        when accumulating gradients, or if ``zero_grad`` is not called right before the forward.
        Only torch's generators (CPU and CUDA) are recorded: they are what a forward pass
        draws dropout from (numpy's and Python's are ~20× dearer to capture every step).
        """
        self._batch_rng = capture_rng(torch_only=True)

    @contextlib.contextmanager
    def at_snapshot(self, model: nn.Module) -> Iterator[None]:
        """Inside: the model holds θ̃ and the RNG replays the current batch; backward there → h.

        On exit the current weights, buffers, RNG state and gradients are back, with each
        gradient now ``g − α_t h`` (the first half of ``v``; :meth:`step` adds ``α_t μ̃``).
        Works for a DDP-wrapped model (``h`` is averaged over ranks by its backward).
        """
        params = self._params()
        self._check_snapshot(params, "at_snapshot")
        if self._applied or self._cached_indices:
            raise OptimizerStateError(
                "at_snapshot after apply_correction() or use_cached() in the same step: call "
                "opt.zero_grad() to start the next step"
            )
        if self._folded and self._measured is not None:
            raise OptimizerStateError(
                "measured alpha takes one (g, h) pair per step, and at_snapshot was already "
                "called in this step: with gradient accumulation use cache mode "
                "(refresh_snapshot(..., cache=True) and opt.use_cached(i) per micro-batch)"
            )
        if self._batch_rng is None:
            raise OptimizerStateError(
                "at_snapshot needs the RNG state of the current batch's forward and none is "
                "recorded: call opt.zero_grad() (or opt.mark_batch()) right before the forward; "
                "with gradient accumulation call opt.mark_batch() before every micro-batch"
            )
        others = other_parameters(model, params)
        rng, self._batch_rng = self._batch_rng, None
        copy = grads_alias_buckets(model)
        grads = take_grads(params, copy=copy)
        other_grads = take_grads(others, copy=copy)
        # Swap storage instead of copying |θ| twice: the parameters (same objects, so DDP and
        # hooks still see them) point at θ̃'s tensors inside the block, at θ's after it.
        current = [p.data for p in params]
        for p, snapshot in zip(params, self._snapshot):
            p.data = snapshot
        folded = False
        try:
            with preserved_buffers(model), replay_rng(rng):
                yield
            self._fold(params, grads)
            folded = self._folded = True
        finally:
            for p, data in zip(params, current):
                p.data = data
            if not folded:
                for p, grad in zip(params, grads):
                    p.grad = grad
            for p, grad in zip(others, other_grads):
                p.grad = grad

    def use_cached(self, index: int) -> None:
        """Use cached batch gradient ``h_index`` of the snapshot pass as this step's ``h``.

        Cache mode only; training batch ``index`` must be bit-identical to snapshot batch
        ``index``. Called once per micro-batch with gradient accumulation, ``h`` is the mean of
        the cached gradients named.
        """
        if self._cache is None:
            raise OptimizerStateError(
                "use_cached needs cache mode: call opt.refresh_snapshot(model, data, loss_fn, "
                "cache=True) first (or use `with opt.at_snapshot(model): ...`)"
            )
        if not 0 <= index < len(self._cache):
            raise InvalidArgumentError(
                f"index must be in [0, {len(self._cache)}) (the snapshot pass had "
                f"{len(self._cache)} batches), got index={index!r}"
            )
        if self._applied or self._folded:
            raise OptimizerStateError(
                "use_cached after apply_correction() or at_snapshot() in the same step: call "
                "opt.zero_grad() to start the next step"
            )
        self._cached_indices.append(index)

    # ------------------------------------------------------------------ step

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients, start a new step and record the RNG state (see mark_batch)."""
        self.base.zero_grad(set_to_none)
        self._reset_step()
        self.mark_batch()

    def apply_correction(self) -> None:
        """Turn ``.grad`` into ``v = g − α_t (h − μ̃)`` now (before gradient clipping).

        Under a GradScaler call it after ``scaler.unscale_(opt)``. :meth:`step` will not apply
        the correction again.
        """
        if self._applied:
            raise OptimizerStateError(
                "apply_correction was already called for this step; call it once, between the "
                "backward passes and step()"
            )
        if self._cached_indices and self._measured is not None:
            self._observe_cached()
        alphas = [(a, b) for a, b in self._alphas() if a != 0.0]
        if alphas:  # alpha = 0 everywhere leaves .grad untouched: the base optimizer exactly
            self._correct(alphas)
        self._applied = True

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Apply the correction (unless :meth:`apply_correction` did), then the base step.

        ``closure`` (as in torch.optim) is evaluated once, before the correction; it must
        compute both backward passes (``g``, and ``h`` inside ``at_snapshot``).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not self._applied:
            self.apply_correction()
        self.base.step()
        if self._measured is not None:
            self._measured.commit(self._step_count, self._snapshot_step)
        self._step_count += 1
        self._reset_step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group to the base optimizer; its alpha is ``param_group["alpha"]`` or
        the constructor's alpha. Refresh the snapshot before the next corrected step."""
        alpha = param_group.pop("alpha", self._default_alpha)
        if alpha is None:
            raise InvalidArgumentError(
                "this AlphaSVRG has one alpha per param group, so the new group needs its own: "
                "add_param_group({'params': ..., 'alpha': 0.5})"
            )
        self.base.add_param_group(param_group)
        self._schedules.append(as_schedule(alpha))
        for key, name in _alpha.param_names(None, self.param_groups[-1:]).items():
            self._names.setdefault(key, name)
        self._buckets = _alpha.buckets(self.param_groups, self._schedules, self._names)
        self._measured = self._new_measured()

    # ------------------------------------------------------------------ state dict

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict plus an ``"alpha_svrg"`` entry: step count, snapshot
        step, schedules (``to_dict``), θ̃, μ̃ and the cache. Loadable with weights_only=True."""
        out = self.base.state_dict()
        out[_STATE_KEY] = {
            "step_count": self._step_count,
            "snapshot_step": self._snapshot_step,
            "snapshot_interval": self.snapshot_interval,
            "alpha": [s.to_dict() for s in self._schedules],
            "snapshot": self._snapshot,
            "mean_grad": self._mean_grad,
            "cache": self._cache,
            "coordinate_alpha": self._coordinate_alpha,
            "measured": None if self._measured is None else self._measured.state_dict(),
        }
        return out

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`, so a run resumed mid-interval continues bit for bit."""
        if _STATE_KEY not in state_dict:
            raise InvalidArgumentError(
                f"state_dict has no {_STATE_KEY!r} entry, so it is a plain optimizer's: load it "
                "with opt.base.load_state_dict(state_dict) and call opt.refresh_snapshot(...)"
            )
        ours = state_dict[_STATE_KEY]
        self.base.load_state_dict({k: v for k, v in state_dict.items() if k != _STATE_KEY})
        self.state, self.param_groups = self.base.state, self.base.param_groups
        params = self._params()
        self._step_count = int(ours["step_count"])
        self._snapshot_step = ours["snapshot_step"]
        self.snapshot_interval = ours["snapshot_interval"]
        saved = [from_dict(d) for d in ours["alpha"]]
        self._schedules = _alpha.group_schedules(saved, len(self.param_groups))
        self._buckets = _alpha.buckets(self.param_groups, self._schedules, self._names)
        self._measured = self._new_measured()
        if self._measured is not None and ours.get("measured") is not None:
            self._measured.load_state_dict(ours["measured"])
        self._snapshot = _like(ours["snapshot"], params)
        self._mean_grad = _like(ours["mean_grad"], params)
        self._coordinate_alpha = _like(ours.get("coordinate_alpha"), params)
        cache = ours["cache"]
        self._cache = None if cache is None else [_like(row, params) for row in cache]
        self._reset_step()

    # ------------------------------------------------------------------ internals

    def _params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _new_measured(self) -> MeasuredAlpha | None:
        params = self._params()
        device = params[0].device if params else torch.device("cpu")
        return MeasuredAlpha.from_buckets(self._buckets, device)

    def _reset_step(self) -> None:
        if getattr(self, "_measured", None) is not None:
            self._measured.discard()  # a step that was not taken adds no pair
        self._folded = False  # at_snapshot folded this step's h into .grad
        self._cached_indices: list[int] = []  # use_cached named these batches
        self._applied = False  # the correction is complete for this step

    def _alphas(self) -> list[tuple[float, AlphaBucket]]:
        since = None if self._snapshot_step is None else self._step_count - self._snapshot_step
        measured = iter(
            () if self._measured is None else self._measured.alphas(self._step_count, since)
        )
        return [
            (next(measured) if b.measured else b.alpha(self._step_count, since), b)
            for b in self._buckets
        ]

    def _observe_cached(self) -> None:
        """Cache mode: h = the mean of the cached batch gradients named this step."""
        assert self._cache is not None and self._measured is not None
        assert self._mean_grad is not None
        rows = [self._cache[index] for index in self._cached_indices]
        hs: list[Tensor | None] = []
        for i in range(len(self._mean_grad)):
            cached = [row[i] for row in rows if row[i] is not None]
            hs.append(
                None
                if not cached
                else cached[0]
                if len(cached) == 1
                else torch.stack(cached).mean(0)
            )
        self._measured.observe([p.grad for p in self._params()], hs, self._mean_grad)

    def _check_snapshot(self, params: list[Tensor], caller: str) -> None:
        if self._snapshot is None:
            raise OptimizerStateError(
                f"{caller} needs a snapshot: call opt.refresh_snapshot(model, data, loss_fn) "
                "first (at the start of every snapshot interval)"
            )
        if len(self._snapshot) != len(params):
            raise OptimizerStateError(
                f"the optimizer has {len(params)} parameters but the snapshot has "
                f"{len(self._snapshot)} (param groups changed): call opt.refresh_snapshot again"
            )

    def set_coordinate_alpha(self, alphas: Mapping[str, Tensor] | None) -> None:
        """Scale alpha per coordinate: v = g − α_t A ⊙ (h − μ̃) with A[name] shaped like the
        parameter (e.g. ``ProbeResult.optimal_alpha()`` with ``alpha=1``: SVRG with the
        per-coordinate optimal coefficient). Parameters not named keep A = 1; None clears it.
        Needs ``named_parameters`` (or a base optimizer built from named parameters)."""
        if alphas is None:
            self._coordinate_alpha = None
            return
        params = self._params()
        names = [self._names.get(id(p)) for p in params]
        if any(n is None for n in names):
            raise InvalidArgumentError(
                "set_coordinate_alpha needs parameter names: pass named_parameters="
                "model.named_parameters() to AlphaSVRG"
            )
        index = {n: i for i, n in enumerate(names)}
        unknown = [n for n in alphas if n not in index]
        if unknown:
            raise InvalidArgumentError(
                f"set_coordinate_alpha got unknown parameters {unknown[:5]}; known: {names[:5]}"
            )
        table: list[Tensor | None] = [None] * len(params)
        for name, value in alphas.items():
            p = params[index[name]]
            if tuple(value.shape) != tuple(p.shape):
                raise InvalidArgumentError(
                    f"coordinate alpha for {name!r} has shape {tuple(value.shape)}, but the "
                    f"parameter has shape {tuple(p.shape)}"
                )
            table[index[name]] = value.detach().to(device=p.device, dtype=p.dtype)
        self._coordinate_alpha = table

    def _coordinate(self, i: int) -> Tensor | None:
        return None if self._coordinate_alpha is None else self._coordinate_alpha[i]

    def _fold(self, params: list[Tensor], grads: list[Tensor | None]) -> None:
        """``.grad ← g − α h`` with ``g = grads`` (stashed) and ``h`` = what the block left."""
        if self._measured is not None:  # before anything below changes g or h in place
            assert self._mean_grad is not None
            self._measured.observe(grads, [p.grad for p in params], self._mean_grad)
        for alpha, bucket in self._alphas():
            gs: list[Tensor] = []
            hs: list[Tensor] = []
            for i in bucket.indices:
                p, g, h = params[i], grads[i], params[i].grad
                coordinate = self._coordinate(i)
                if h is None or alpha == 0.0:
                    p.grad = g
                elif coordinate is not None:
                    h = h.mul_(coordinate)
                    p.grad = h.mul_(-alpha) if g is None else g.sub_(h, alpha=alpha)
                elif g is None:
                    p.grad = h.mul_(-alpha)
                else:
                    p.grad = g
                    gs.append(g)
                    hs.append(h)
            fold_snapshot_grads_(gs, hs, alpha)

    def _correct(self, alphas: list[tuple[float, AlphaBucket]]) -> None:
        params = self._params()
        self._check_snapshot(params, "step")
        assert self._snapshot_step is not None and self._mean_grad is not None  # set with θ̃
        interval, age = self.snapshot_interval, self._step_count - self._snapshot_step
        if interval is not None and age >= interval:
            raise OptimizerStateError(
                f"the snapshot is {age} steps old but snapshot_interval={interval}: call "
                "opt.refresh_snapshot(...) whenever opt.snapshot_due is True"
            )
        if not self._folded and not self._cached_indices:
            raise OptimizerStateError(
                f"alpha={alphas[0][0]} at step {self._step_count} but this step has no snapshot "
                "gradient h: run the batch again inside `with opt.at_snapshot(model):` (or call "
                "opt.use_cached(i) in cache mode) before step(), or use alpha=0"
            )
        mean_grad = self._mean_grad
        for alpha, bucket in alphas:
            if self._cached_indices:
                self._fold_cached(params, bucket, alpha / len(self._cached_indices))
            with_grad = [i for i in bucket.indices if params[i].grad is not None]
            plain = [i for i in with_grad if self._coordinate(i) is None]
            add_mean_grads_([params[i].grad for i in plain], [mean_grad[i] for i in plain], alpha)
            for i in with_grad:
                coordinate = self._coordinate(i)
                if coordinate is not None and alpha != 0.0:
                    params[i].grad.add_(mean_grad[i] * coordinate, alpha=alpha)

    def _fold_cached(self, params: list[Tensor], bucket: AlphaBucket, alpha: float) -> None:
        assert self._cache is not None  # use_cached checked it
        for index in self._cached_indices:
            row = self._cache[index]
            gs: list[Tensor] = []
            hs: list[Tensor] = []
            for i in bucket.indices:
                p, h = params[i], row[i]
                if h is None:
                    continue
                coordinate = self._coordinate(i)
                if coordinate is not None:
                    h = h * coordinate
                if p.grad is None:
                    p.grad = h * -alpha
                else:
                    gs.append(p.grad)
                    hs.append(h)
            fold_snapshot_grads_(gs, hs, alpha)


def _like(tensors: list[Tensor | None] | None, params: list[Tensor]) -> list[Any] | None:
    """Copies of ``tensors`` on each parameter's device and dtype (None stays None)."""
    if tensors is None:
        return None
    if len(tensors) != len(params):
        raise InvalidArgumentError(
            f"the saved alpha-SVRG state has {len(tensors)} tensors but the optimizer has "
            f"{len(params)} parameters: load it into an optimizer built the same way"
        )
    return [
        None if t is None else t.to(device=p.device, dtype=p.dtype, copy=True)
        for t, p in zip(tensors, params)
    ]
