"""Find the model weights inside a loaded ``torch.save`` object.

Accepted, in this order: a plain state_dict (name -> tensor); a dict holding one under a
usual key (``model``, ``model_state_dict``, ``state_dict`` (PyTorch Lightning), ``module``,
``net``, ``network``, ``weights``); with ``weights="ema"`` the exponential-moving-average copy
(``ema``, ``model_ema``, ``ema_model``, ``ema_state_dict``, ``state_dict_ema``); any other
``weights=`` value is taken as the exact key. Optimizer states (``state`` + ``param_groups``)
are recognised so they are never taken for weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from gradvar.checkpoints._common import StateDict, listing, scalar_fields
from gradvar.checkpoints._inert import unloaded_names
from gradvar.errors import CheckpointError

__all__ = ["MODEL_KEYS", "EMA_KEYS", "split_weights", "is_optimizer_state"]

MODEL_KEYS = ("model", "model_state_dict", "state_dict", "module", "net", "network", "weights")
EMA_KEYS = ("ema", "model_ema", "ema_model", "ema_state_dict", "state_dict_ema")


def is_optimizer_state(obj: Any) -> bool:
    """True for an ``optimizer.state_dict()`` (its ``state`` and ``param_groups`` entries)."""
    return isinstance(obj, Mapping) and "param_groups" in obj and "state" in obj


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _unloaded_note(state: Mapping[str, Any]) -> str:
    names = unloaded_names(dict(state), depth=1)
    if not names:
        return ""
    return (
        f" (pickled objects {listing(names)}, which gradvar does not load: it never executes "
        "pickled code); re-save the tensors only, e.g. torch.save(model.state_dict(), path)"
    )


def split_weights(obj: Any, where: Any, weights: str = "model") -> tuple[StateDict, dict, str]:
    """``(state_dict, scalar metadata, key it was found under or "")`` of a loaded object."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a state_dict or a dict")
    if is_optimizer_state(obj):
        raise CheckpointError(
            f"{where} holds an optimizer state (state, param_groups), not weights"
        )
    keys = EMA_KEYS if weights == "ema" else MODEL_KEYS if weights == "model" else (weights,)
    for key in keys:
        value = obj.get(key)
        if isinstance(value, Mapping) and not is_optimizer_state(value):
            odd = [k for k, v in value.items() if not isinstance(v, torch.Tensor)]
            if odd:
                raise CheckpointError(
                    f"state_dict under {key!r} in {where} has non-tensor entries {listing(odd)}"
                    + _unloaded_note(value)
                )
            return dict(value), scalar_fields(obj, skip=key), key
    if weights == "model" and _is_state_dict(obj):
        return dict(obj), {}, ""
    found = listing([k for k in obj if isinstance(k, str)])
    if weights != "model":
        raise CheckpointError(
            f"no {'EMA ' if weights == 'ema' else ''}weights in {where}: looked for "
            f"{' / '.join(map(repr, keys))}; found keys {found}. Pass weights= the key that "
            "holds them."
        )
    odd = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if any(isinstance(v, torch.Tensor) for v in obj.values()) and odd:
        raise CheckpointError(
            f"state_dict in {where} has non-tensor entries {listing(odd)}" + _unloaded_note(obj)
        )
    raise CheckpointError(
        f"no weights found in {where}: expected a state_dict (name -> tensor) or a dict with a "
        f"{' / '.join(map(repr, MODEL_KEYS))} entry; found keys {found}. For EMA weights pass "
        "weights='ema'; for another key pass weights='KEY'."
    )
