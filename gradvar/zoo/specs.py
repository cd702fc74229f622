"""Resolve ``"package.module:function"`` strings: how custom models and data are named."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from gradvar.errors import InvalidArgumentError

__all__ = ["resolve_callable", "is_callable_spec"]


def is_callable_spec(spec: str) -> bool:
    """True if ``spec`` looks like ``"module:attribute"`` rather than a registry name."""
    return ":" in spec


def resolve_callable(spec: str) -> Callable[..., Any]:
    """Import ``"pkg.mod:fn"`` (or ``"pkg.mod:Class.method"``) and return the callable.

    Raises InvalidArgumentError naming the spec and the part that failed: a missing colon,
    a module that does not import, an attribute the module lacks, or a non-callable value.
    """
    if not isinstance(spec, str) or spec.count(":") != 1:
        raise InvalidArgumentError(
            f"expected a callable spec of the form 'package.module:function', got {spec!r}"
        )
    module_name, attr_path = (part.strip() for part in spec.split(":"))
    if not module_name or not attr_path:
        raise InvalidArgumentError(
            f"callable spec {spec!r} needs both a module and an attribute, e.g. 'mypkg.data:load'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidArgumentError(
            f"cannot import module {module_name!r} named in spec {spec!r}: {exc}. "
            "Check the spelling and that the module is on PYTHONPATH (or installed)."
        ) from exc
    value: Any = module
    for part in attr_path.split("."):
        if not hasattr(value, part):
            public = sorted(n for n in dir(value) if not n.startswith("_"))
            shown = ", ".join(public[:20]) + (
                f", ... ({len(public) - 20} more)" if len(public) > 20 else ""
            )
            raise InvalidArgumentError(
                f"{getattr(value, '__name__', value)!r} has no attribute {part!r} "
                f"(from spec {spec!r}); available: {shown or 'nothing public'}"
            )
        value = getattr(value, part)
    if not callable(value):
        raise InvalidArgumentError(
            f"spec {spec!r} resolves to a {type(value).__name__}, which is not callable"
        )
    return value
