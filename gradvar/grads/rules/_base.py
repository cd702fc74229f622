"""What a per-layer rule sees and returns, and the registry that maps modules to rules.

A *rule* turns what one call of a module leaves behind in an ordinary batched forward and
backward — its inputs, its output, and δ, the gradient of the summed per-example loss with
respect to that output — into per-example gradient blocks of the module's own parameters.
Because example i's loss depends on example i's activations only (BatchNorm is frozen by
policy), δ_i = ∂f_i/∂z_i, so each rule is the textbook backward of its layer done per example.

Rules are looked up by module type (most derived first; users' rules before the built-in
ones) or by a predicate, so a user can teach gradvar their own module::

    gradvar.grads.register_rule(MyLayer, MyLayerRule())
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from gradvar.blocks import GradBlock

__all__ = ["Call", "Rule", "NotApplicable", "register_rule", "rule_for", "registered_rules"]


class NotApplicable(Exception):
    """Raised by a rule for a call it cannot handle (the parameter then goes through vmap)."""


@dataclass
class Call:
    """One call of a hooked module: its inputs and output (detached) and δ = ∂(Σ_i f_i)/∂out."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: Any
    grad: Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    live: Tensor | None = None  # the output tensor itself, to differentiate with respect to
    version: int = 0  # its version counter at call time (a later in-place op bumps it)

    @property
    def modified_in_place(self) -> bool:
        return self.live is not None and self.live._version != self.version


class Rule:
    """Per-example gradient blocks of a module's parameters from one :class:`Call`.

    ``params`` lists the attribute names the rule computes; :meth:`blocks` returns
    ``{attribute: block of n per-example gradients}`` or raises :class:`NotApplicable`.
    """

    name = "rule"
    params: tuple[str, ...] = ("weight", "bias")
    broadcast_batch = False  # an output of batch 1 may be expanded to the chunk's batch

    def covers(self, module: nn.Module) -> list[str]:
        """Attribute names of ``module`` this rule computes (those that are set)."""
        return [p for p in self.params if isinstance(getattr(module, p, None), Tensor)]

    def capture(self, module: nn.Module) -> dict[str, Any]:
        """State read at call time (e.g. the running statistics the forward used)."""
        return {}

    def blocks(self, module: nn.Module, call: Call, n: int) -> dict[str, GradBlock]:
        raise NotImplementedError


Matcher = type | Callable[[nn.Module], bool]
_REGISTRY: list[tuple[Matcher, Rule]] = []
_USER: list[tuple[Matcher, Rule]] = []


def register_rule(match: Matcher, rule: Rule, *, builtin: bool = False) -> None:
    """Use ``rule`` for modules of type ``match`` (subclasses too) or where ``match(module)``.

    Rules registered later by users take precedence over earlier ones and over built-ins.
    """
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a gradvar.grads.Rule instance, got {type(rule).__name__}")
    (_REGISTRY if builtin else _USER).insert(0 if not builtin else len(_REGISTRY), (match, rule))


def _matches(match: Matcher, module: nn.Module) -> bool:
    if isinstance(match, type):
        return isinstance(module, match)
    return bool(match(module))


def rule_for(module: nn.Module) -> Rule | None:
    """The rule for ``module``: users' first, then the most specific built-in type match."""
    for match, rule in _USER:
        if _matches(match, module):
            return rule
    best: tuple[int, Rule] | None = None
    for match, rule in _REGISTRY:
        if not _matches(match, module):
            continue
        depth = type(module).__mro__.index(match) if isinstance(match, type) else 10_000
        if best is None or depth < best[0]:
            best = (depth, rule)
    return None if best is None else best[1]


def registered_rules() -> list[tuple[Matcher, Rule]]:
    """Every registered (matcher, rule) pair, users' first."""
    return [*_USER, *_REGISTRY]
