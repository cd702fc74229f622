"""Load a ``torch.save`` file whose non-weight entries pickle objects, without running them.

Real checkpoints carry more than weights: Lightning's ``hyper_parameters`` hold whatever
``save_hyperparameters()`` was given (an ``argparse.Namespace``, an ``Enum``, a config object),
callbacks store their state, a training script saves its ``args``. ``torch.load(...,
weights_only=True)`` refuses the whole file for one such object. Here every global that torch
does not allow (listed statically by ``torch.serialization.get_unsafe_globals_in_checkpoint``,
or named by the refusal for one pushed dynamically) is allowed *under its name* as an inert
stand-in — a fresh class that accepts any arguments and state and does nothing — and torch's own
weights-only unpickler loads the file. No pickled callable is ever imported or called; the
tensors load as usual; the stand-ins sit where the objects were (``Unloaded`` instances, or an
empty dict/list where the object was a dict or list subclass). A stand-in where weights are
expected is an error of the caller (:mod:`._weights`).

torch's allowlist is process-wide: while a file loads here, another thread's
``torch.load(weights_only=True)`` of a file naming the same globals would get stand-ins too
(never the real objects). Loads here are serialised by a lock.
"""

from __future__ import annotations

import pickle
import re
import threading
from pathlib import Path
from typing import Any

import torch

__all__ = ["Unloaded", "load_with_stand_ins", "unloaded_names"]

_MAX_ROUNDS = 16  # dynamically pushed globals and container kinds found one refusal at a time
_STAND_IN = re.compile(r"Unloaded\[([^\]]+)\]")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")
_CONTAINER = re.compile(r"Can only (SETITEMS?|append|extend)")
_LOCK = threading.Lock()


class Unloaded:
    """Where a pickled object stood: its global's name, nothing of its state."""

    pickled_global = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> Unloaded:  # noqa: ARG004 (inert)
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # inert: arguments are dropped
        pass

    def __setstate__(self, state: Any) -> None:  # inert: state is dropped
        pass

    def __repr__(self) -> str:
        return f"<not loaded: {self.pickled_global}>"


def _stand_in(name: str, kind: str) -> type:
    """An inert class for global ``name``: an ``Unloaded`` (kind "object"), or one whose
    construction gives an empty dict or list (the global subclasses one: items follow)."""
    attrs: dict[str, Any] = {"pickled_global": name, "__module__": __name__}
    if kind != "object":
        empty = dict if kind == "dict" else list
        attrs["__new__"] = lambda cls, *args, **kwargs: empty()
    return type(f"Unloaded[{name}]", (Unloaded,), attrs)


def _listed(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 (legacy, non-zip file: only the refusals name them)
        return []


def load_with_stand_ins(path: Path, *, mmap: bool) -> tuple[Any, list[str]]:
    """``(object, names of the globals replaced by stand-ins)``; re-raises torch's
    ``UnpicklingError`` for anything a stand-in cannot fix."""
    kinds = dict.fromkeys(_listed(path), "object")
    for _ in range(_MAX_ROUNDS):
        allowed = [(_stand_in(name, kind), name) for name, kind in kinds.items()]
        try:
            with _LOCK, torch.serialization.safe_globals(allowed):
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            return obj, sorted(kinds)
        except pickle.UnpicklingError as exc:
            message = str(exc)
            named = _GLOBAL.search(message)
            stand_in = _STAND_IN.search(message)
            container = _CONTAINER.search(message)
            if named and named.group(1) not in kinds:
                kinds[named.group(1)] = "object"
            elif stand_in and container and kinds.get(stand_in.group(1)) == "object":
                kinds[stand_in.group(1)] = "dict" if "SETITEM" in container.group(1) else "list"
            else:
                raise
    raise pickle.UnpicklingError(f"{path}: more than {_MAX_ROUNDS} rounds of stand-ins")


def unloaded_names(obj: Any, depth: int = 3) -> list[str]:
    """The globals of the ``Unloaded`` stand-ins in ``obj`` (dicts, lists, tuples; ``depth``
    levels), sorted and without repeats."""
    found: set[str] = set()

    def walk(value: Any, level: int) -> None:
        if isinstance(value, Unloaded):
            found.add(value.pickled_global)
        elif level > 0 and isinstance(value, dict):
            for item in value.values():
                walk(item, level - 1)
        elif level > 0 and isinstance(value, (list, tuple)):
            for item in value:
                walk(item, level - 1)

    walk(obj, depth)
    return sorted(found)
