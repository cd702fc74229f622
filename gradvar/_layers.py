"""Grouping parameters into layers (named groups of coordinates)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from gradvar.errors import InvalidArgumentError

__all__ = ["LayerSpec", "group_parameters"]

LayerSpec = None | str | Mapping[str, str | Sequence[str]]


def group_parameters(names: Sequence[str], layers: LayerSpec) -> dict[str, list[str]]:
    """Layer name → parameter names.

    ``None``: one layer per parameter tensor (its name). ``"module"``: one layer per module
    owning parameters (``"0.weight"`` and ``"0.bias"`` → ``"0"``). A mapping: layer name → a
    regular expression matched (``re.fullmatch``) against parameter names, or an explicit list.
    """
    if layers is None:
        return {n: [n] for n in names}
    if layers == "module":
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(n.rpartition(".")[0] or n, []).append(n)
        return groups
    if not isinstance(layers, Mapping):
        raise InvalidArgumentError(
            "layers must be None (one per parameter), 'module', or a mapping of layer name to "
            f"a regex or a list of parameter names; got layers={layers!r}"
        )
    out: dict[str, list[str]] = {}
    for layer, spec in layers.items():
        if isinstance(spec, str):
            chosen = [n for n in names if re.fullmatch(spec, n)]
        else:
            unknown = [n for n in spec if n not in names]
            if unknown:
                raise InvalidArgumentError(
                    f"layer {layer!r} lists unknown parameters {unknown}; known: {list(names)[:10]}"
                )
            chosen = list(spec)
        if not chosen:
            raise InvalidArgumentError(
                f"layer {layer!r} matches no parameter (spec {spec!r}); known: {list(names)[:10]}"
            )
        out[layer] = chosen
    return out
