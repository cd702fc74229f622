"""The gradient engine: per-sample gradient blocks of chosen parameters for one chunk.

Per chunk and weight set, one ordinary batched forward of the model as written (fused
attention, in-place ops and all) and one backward of the summed per-example losses; hooks
capture what each parametrised module saw, and a small rule per layer kind (see
:mod:`gradvar.grads.rules`) turns that into per-example gradient blocks. A parameter used by
several modules or calls gets the per-example sum over its uses. Parameters no rule covers are
watched for direct broadcasting uses (``cls_token``, ``pos_embed``), and whatever is left goes
through ``vmap(grad)`` for those parameters only — or, where vmap cannot trace the model
(packed variable-length sequences), a per-sample backward loop.

Nothing is silently wrong: on the first chunk every rule-routed parameter is checked against
autograd — the sum of its per-example gradients against the batched gradient, and example 0's
against that example's own backward — and a parameter that fails (an uncounted use, a batch
axis that is not the first) moves to vmap for good. Each parameter's route is in
:attr:`GradientEngine.routes`, with the reason for every fallback in :attr:`reasons`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from gradvar._utils import RngState, capture_rng, replay_rng
from gradvar.blocks import DenseBlock, GradBlock, sum_blocks
from gradvar.grads._capture import ModuleCapture
from gradvar.grads._loop import loop_blocks
from gradvar.grads._loss import LossFn, per_example_losses
from gradvar.grads._vmap import vmap_blocks
from gradvar.grads.rules import DirectUses, NotApplicable, Rule, rule_for

__all__ = ["GradientEngine", "VMAP", "DIRECT", "LOOP"]

VMAP = "vmap"
DIRECT = "direct"
LOOP = "loop"  # a per-sample backward loop, where vmap cannot trace the model
_VERIFY_RTOL = {torch.float64: 1e-8, torch.float32: 2e-4}


class GradientEngine:
    """Computes per-sample gradient blocks of ``param_names`` for a chunk of data.

    ``unit_size``: None for per-example gradients, b for mini-batch gradients of b examples.
    ``closed_form``: use the per-layer rules (False: every parameter through vmap).
    ``verify``: check every rule against autograd on the first chunk (see module docstring).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        param_names: Sequence[str],
        *,
        unit_size: int | None = None,
        closed_form: bool = True,
        verify: bool = True,
    ) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.param_names = list(param_names)
        self.unit_size = unit_size
        self.routes: dict[str, str] = {}
        self.reasons: dict[str, str] = {}
        self._uses: dict[str, list[tuple[int, str]]] = {}
        self._modules: dict[int, tuple[nn.Module, Rule]] = {}
        self._plan(closed_form)
        self._verified = not verify

    # ------------------------------------------------------------------ planning
    def _plan(self, closed_form: bool) -> None:
        measured = set(self.param_names)
        canonical = {id(p): name for name, p in self.model.named_parameters()}
        if closed_form:
            for _, module in self.model.named_modules(remove_duplicate=False):
                rule = rule_for(module)
                if rule is None:
                    continue
                for local in rule.covers(module):
                    name = canonical.get(id(getattr(module, local)))
                    if name not in measured:
                        continue
                    uses = self._uses.setdefault(name, [])
                    if (id(module), local) not in uses:
                        uses.append((id(module), local))
                        self._modules[id(module)] = (module, rule)
        owners = {
            canonical[id(p)]: type(m).__name__
            for m in self.model.modules()
            for p in m.parameters(recurse=False)
            if id(p) in canonical
        }
        self._owner_kind = owners
        for name in self.param_names:
            if name in self._uses:
                rules = {self._modules[m][1].name for m, _ in self._uses[name]}
                self.routes[name] = "+".join(sorted(rules))
            else:
                self.routes[name] = DIRECT if closed_form else VMAP

    @property
    def closed_form_params(self) -> list[str]:
        """Parameters currently handled by a rule (neither vmap nor the loop)."""
        return [n for n in self.param_names if self.routes[n] not in (VMAP, LOOP)]

    def _fall_back(self, name: str, reason: str) -> None:
        self.routes[name] = VMAP
        self.reasons[name] = reason

    # ------------------------------------------------------------------ one chunk
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

        Both passes (hooked and vmap) start from the same ``rng``, so they see the same
        dropout masks as each other and as any other weight set given the same ``rng``.
        """
        rng = capture_rng() if rng is None else rng
        out: dict[str, GradBlock] = {}
        hooked = self.closed_form_params
        if hooked:
            with replay_rng(rng):
                out.update(self._hooked_blocks(params, buffers, inputs, targets, hooked))
        rest = [n for n in self.param_names if n not in out and self.routes[n] != LOOP]
        args = (params, buffers, rest, inputs, targets, self.unit_size)
        if rest:
            try:
                with replay_rng(rng):
                    out.update(vmap_blocks(self.model, self.loss_fn, *args))
            except Exception as err:  # noqa: BLE001 - vmap cannot trace this model
                for name in rest:
                    self.routes[name] = LOOP
                    self.reasons[name] = (
                        self.reasons.get(name, "") + f"; vmap failed ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:160]})"
                    ).lstrip("; ")
        looped = [n for n in self.param_names if self.routes[n] == LOOP]
        if looped:
            with replay_rng(rng):
                out.update(loop_blocks(self.model, self.loss_fn, params, buffers, looped,
                                       inputs, targets, self.unit_size))  # fmt: skip
        return {name: out[name] for name in self.param_names}

    def _hooked_blocks(
        self,
        params: Mapping[str, Tensor],
        buffers: Mapping[str, Tensor],
        inputs: Tensor,
        targets: Tensor,
        hooked: list[str],
    ) -> dict[str, GradBlock]:
        n = inputs.shape[0]
        wanted = set(hooked)
        leaves = {k: v.detach().requires_grad_(k in wanted) for k, v in params.items()}
        direct = {p: params[p] for p in hooked if self.routes[p] == DIRECT}
        modules = {str(m): self._modules[m] for p in hooked for m, _ in self._uses.get(p, [])}
        uses_mode = DirectUses(direct) if direct else None
        if uses_mode is not None:
            leaves.update(uses_mode.leaves)  # watched leaves report their own uses
        with ModuleCapture(modules, n) as capture:
            outputs = functional_call(self.model, {**leaves, **buffers}, (inputs,))
        losses = per_example_losses(self.loss_fn, outputs, targets)
        verify = not self._verified
        if verify:  # differentiate to the weights: the batched gradients check the rules
            totals = torch.autograd.grad(
                losses.sum(), [leaves[p] for p in hooked], allow_unused=True, retain_graph=True
            )
        else:  # to the captured outputs only: no weight-gradient GEMMs are spent
            torch.autograd.grad(
                losses.sum(),
                self._grad_targets(hooked, leaves, capture, uses_mode),
                allow_unused=True,
            )
        capture.release()  # no cycle tensor → hook → call → tensor outlives the backward
        if uses_mode is not None:
            uses_mode.release()
        blocks: dict[str, GradBlock] = {}
        for name in hooked:
            try:
                parts = self._parts(name, capture, uses_mode, n)
            except NotApplicable as err:
                self._fall_back(name, str(err))
                continue
            if not parts:
                parts = [
                    DenseBlock(
                        torch.zeros(
                            n,
                            *params[name].shape,
                            dtype=params[name].dtype,
                            device=params[name].device,
                        )
                    )
                ]
            blocks[name] = sum_blocks(parts)
        if verify:
            first = torch.autograd.grad(losses[0], [leaves[p] for p in hooked], allow_unused=True)
            self._verify(blocks, dict(zip(hooked, totals)), dict(zip(hooked, first)), n)
            self._verified = True
        if self.unit_size is not None:
            blocks = {k: b.group(self.unit_size) for k, b in blocks.items()}
        return blocks

    def _grad_targets(
        self,
        hooked: list[str],
        leaves: Mapping[str, Tensor],
        capture: ModuleCapture,
        uses_mode: DirectUses | None,
    ) -> list[Tensor]:
        """What the backward must reach for every hook to fire: each captured output, or —
        where later code modified that output in place, so that differentiating with respect
        to it would give the post-modification gradient — the weights behind it."""
        targets: dict[int, Tensor] = {}
        for name in hooked:
            if self.routes[name] == DIRECT:
                assert uses_mode is not None
                records = uses_mode.uses[name]
            else:
                records = [c for m, _ in self._uses[name] for c in capture.calls[str(m)]]
            for record in records:
                target = leaves[name] if record.modified_in_place else record.live
                if target is not None:
                    targets[id(target)] = target
        return list(targets.values()) or [leaves[hooked[0]]]

    def _parts(
        self, name: str, capture: ModuleCapture, uses_mode: DirectUses | None, n: int
    ) -> list[GradBlock]:
        if self.routes[name] == DIRECT:
            assert uses_mode is not None
            if name in uses_mode.unsupported:
                raise NotApplicable(f"used directly by {uses_mode.unsupported[name]!r}")
            if not uses_mode.uses[name]:
                kind = self._owner_kind.get(name, "?")
                raise NotApplicable(f"no rule for {kind} and no direct broadcasting use seen")
            parts = [use.block(n) for use in uses_mode.uses[name] if use.grad is not None]
            if any(p is None for p in parts):
                raise NotApplicable("used in an op whose output is not batched on its first axis")
            return parts  # type: ignore[return-value]
        parts: list[GradBlock] = []
        for module_id, local in self._uses[name]:
            module, rule = self._modules[module_id]
            for call in capture.calls[str(module_id)]:
                if call.grad is None:
                    continue
                try:
                    parts.append(rule.blocks(module, call, n)[local])
                except NotApplicable as err:
                    raise NotApplicable(f"{rule.name}: {err}") from None
                except Exception as err:  # noqa: BLE001 - e.g. a subclass with its own forward
                    raise NotApplicable(
                        f"{rule.name} failed on {type(module).__name__} "
                        f"({type(err).__name__}: {str(err).splitlines()[0][:120]})"
                    ) from None
        return parts

    def _verify(
        self,
        blocks: dict[str, GradBlock],
        totals: Mapping[str, Tensor | None],
        first: Mapping[str, Tensor | None],
        n: int,
    ) -> None:
        """Move every parameter whose blocks disagree with autograd to vmap."""
        only_first = torch.zeros(n, dtype=torch.bool)
        only_first[0] = True
        for name, block in list(blocks.items()):
            checks = (
                ("the batched gradient", block.sum(), totals[name]),
                (
                    "example 0's gradient",
                    block.select(only_first.to(block.device)).sum(),
                    first[name],
                ),
            )
            for what, mine, ref in checks:
                ref64 = torch.zeros_like(mine) if ref is None else ref.to(torch.float64)
                rtol = _VERIFY_RTOL.get(ref.dtype if ref is not None else torch.float32, 1e-2)
                scale = float(ref64.norm() + mine.norm()) + 1e-30
                error = float((mine.reshape(ref64.shape) - ref64).norm())
                if error > rtol * scale:
                    self._fall_back(
                        name,
                        f"route {self.routes[name]!r} disagreed with {what} (relative error "
                        f"{error / scale:.1e}): a use the rule does not see, or a batch axis "
                        "that is not the first",
                    )
                    del blocks[name]
                    break
